"""Losses of keras_ssl: pure functions plus thin `keras.losses.Loss` wrappers.

The definitions are the normative ones of DESIGN.md. Every loss computes in
float32 whatever the compute dtype (mixed precision safe).
"""

import keras
import tensorflow as tf

# Value subtracted from masked logits. Logits are float32 here, so 1e9 cannot
# overflow (in float16 it would become inf; see TECH_NOTES "Speed on this CPU").
_MASK_VALUE = 1e9


def _gather_across_replicas(z):
    """All-gathers `z` over the replicas of the current replica context.

    Returns `(gathered, offset)`: the concatenation of every replica's `z` along
    axis 0 (differentiable: gradients flow back to the replica that owns each
    row) and the row at which this replica's rows start. The offset comes from
    the gathered sizes, so an uneven split (15 -> 8/7) is handled.
    Outside a multi-replica context returns `(z, 0)`.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return z, tf.constant(0, tf.int32)
    local_size = tf.shape(z, out_type=tf.int32)[:1]
    sizes = ctx.all_gather(local_size, axis=0)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica_id])
    return ctx.all_gather(z, axis=0), offset


def nt_xent_terms(z_a, z_b, temperature=0.5, cross_replica=True):
    """Per-anchor NT-Xent losses and "positive ranked first" flags.

    SimCLR's normalised temperature-scaled cross entropy (Chen et al. 2020,
    eq. 1). With `z` L2-normalised and `s(u, v) = u.v / temperature`, the loss
    of anchor `z_a[i]` is

        -log( exp(s(a_i, b_i)) / sum_{k != a_i} exp(s(a_i, k)) )

    where `k` runs over all 2N views except the anchor itself (the
    self-similarity is masked); the same for every `z_b[i]` with the roles of
    `a` and `b` swapped. Inside a multi-replica context with
    `cross_replica=True` the keys `k` come from every replica (all-gather), so
    each replica's terms equal the corresponding terms of one device holding
    the whole global batch.

    Args:
      z_a, z_b: `[n, d]` projections of the two views of the same n images.
      temperature: softmax temperature; 0.5 is the SimCLR paper's CIFAR-10
        default (its Table 5 / Appendix B.9).
      cross_replica: gather negatives from all replicas (SimCLR's default).

    Returns:
      `(losses, correct)`: float32 `[2n]` losses (views a first, then b) and
      bool `[2n]`, True where the positive has the largest logit.
    """
    z_a = tf.math.l2_normalize(tf.cast(z_a, tf.float32), axis=-1)
    z_b = tf.math.l2_normalize(tf.cast(z_b, tf.float32), axis=-1)
    if cross_replica:
        keys_a, offset = _gather_across_replicas(z_a)
        keys_b, _ = _gather_across_replicas(z_b)
    else:
        keys_a, keys_b, offset = z_a, z_b, tf.constant(0, tf.int32)
    n = tf.shape(z_a)[0]
    n_keys = tf.shape(keys_a)[0]
    labels = tf.range(n) + offset
    self_mask = tf.one_hot(labels, n_keys, dtype=tf.float32) * _MASK_VALUE
    inv_t = 1.0 / float(temperature)

    logits_ab = tf.matmul(z_a, keys_b, transpose_b=True) * inv_t
    logits_aa = tf.matmul(z_a, keys_a, transpose_b=True) * inv_t - self_mask
    logits_ba = tf.matmul(z_b, keys_a, transpose_b=True) * inv_t
    logits_bb = tf.matmul(z_b, keys_b, transpose_b=True) * inv_t - self_mask
    # Positive of anchor i sits at column `labels[i]` of the first block.
    logits_a = tf.concat([logits_ab, logits_aa], axis=1)
    logits_b = tf.concat([logits_ba, logits_bb], axis=1)
    logits = tf.concat([logits_a, logits_b], axis=0)
    targets = tf.concat([labels, labels], axis=0)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
    correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), targets)
    return losses, correct


def nt_xent(z_a, z_b, temperature=0.5, cross_replica=True):
    """NT-Xent loss (SimCLR), mean over the 2N anchors; see `nt_xent_terms`.

    On one device this is the mean over all 2N anchors of the batch. In a
    multi-replica context it is the mean over this replica's anchors, with
    negatives from every replica: average it over replicas (Keras's
    convention, `loss / num_replicas_in_sync` before `apply_gradients`) to get
    the global loss and gradients of one device holding the whole batch.
    """
    losses, _ = nt_xent_terms(z_a, z_b, temperature, cross_replica)
    return tf.reduce_mean(losses)


@keras.saving.register_keras_serializable(package="keras_ssl")
class NTXent(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `nt_xent` for `compile(loss=NTXent())`.

    `y_pred` holds both views' projections stacked on axis 1, `[N, 2, d]`
    (or concatenated on the last axis, `[N, 2d]`); `y_true` is ignored. The
    per-sample value is the mean of the two anchors of a pair, so Keras's
    default "sum_over_batch_size" reduction gives exactly `nt_xent`.
    """

    def __init__(self, temperature=0.5, cross_replica=True, name="nt_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)
        self.cross_replica = bool(cross_replica)

    def call(self, y_true, y_pred):
        del y_true
        if y_pred.shape.rank == 3:
            z_a, z_b = y_pred[:, 0], y_pred[:, 1]
        else:
            z_a, z_b = tf.split(y_pred, 2, axis=-1)
        losses, _ = nt_xent_terms(z_a, z_b, self.temperature, self.cross_replica)
        return tf.reduce_mean(tf.reshape(losses, [2, -1]), axis=0)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, cross_replica=self.cross_replica)
        return config
