"""SimCLR's NT-Xent (Chen et al. 2020): InfoNCE between two views of each image,
against the other views of the global batch; and its `keras.losses.Loss` wrapper."""

import keras
import tensorflow as tf

from keras_ssl.losses.predictive_coding import info_nce_terms
from keras_ssl.losses.replicas import gather_across_replicas


def nt_xent_terms(z_a, z_b, temperature=0.5, cross_replica=True):
    """Per-anchor NT-Xent losses and "positive ranked first" flags.

    SimCLR's normalised temperature-scaled cross entropy (Chen et al. 2020,
    eq. 1), InfoNCE (`info_nce_terms`) over both views. With `z` L2-normalised
    and `s(u, v) = u.v / temperature`, the loss of anchor `z_a[i]` is

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
        keys_a, offset = gather_across_replicas(z_a)
        keys_b, _ = gather_across_replicas(z_b)
    else:
        keys_a, keys_b, offset = z_a, z_b, tf.constant(0, tf.int32)
    own = tf.range(tf.shape(z_a)[0]) + offset  # each anchor's row among the gathered keys
    n_keys = tf.shape(keys_a)[0]
    # Keys [other view; same view]: the positive is the other view's row, the anchor itself is masked.
    terms_a, correct_a = info_nce_terms(z_a, tf.concat([keys_b, keys_a], 0), own, temperature, own + n_keys)
    terms_b, correct_b = info_nce_terms(z_b, tf.concat([keys_a, keys_b], 0), own, temperature, own + n_keys)
    return tf.concat([terms_a, terms_b], 0), tf.concat([correct_a, correct_b], 0)


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
