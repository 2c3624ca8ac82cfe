"""What a method's step reads from a batch, and how one replica's loss is scaled so
that the replicas' sum is the loss of the global batch."""

import keras
import tensorflow as tf

from keras_ssl.errors import UserError

_NO_SAMPLE_WEIGHT = ("keras_ssl's methods do not use sample_weight or class_weight (their losses weight every "
                     "example of the global batch equally); drop them, or subsample or repeat examples in the "
                     "data instead")


def split_data(data):
    """`x` or `(x, y)` or `(x, y, sample_weight)` -> `(x, y)`.

    Keras's `unpack_x_y_sample_weight` with one difference: a 2-tuple of two
    image batches is a pair of inputs without labels (SimCLR's
    `(view_a, view_b)`), not `(x, y)`.
    """
    if isinstance(data, dict):
        raise UserError("dict batches are not supported; pass x or (x, y)")
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)) \
            and _is_image_batch(data[1]):
        return tuple(data), None
    if isinstance(data, (tuple, list)) and len(data) > 3:
        raise UserError(f"a batch must be x, (x, y) or (x, y, sample_weight), got {len(data)} items")
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(data) if isinstance(data, list) else data)
    if sample_weight is not None:
        raise UserError(_NO_SAMPLE_WEIGHT)
    return x, y


def _is_image_batch(t):
    return getattr(t, "shape", None) is not None and t.shape.rank == 4


def global_batch_size(local_size):
    """Sum of `local_size` over the replicas of the current replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tf.cast(local_size, tf.int32)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local_size, tf.int32))


def classification_loss(logits, labels, loss_tracker, accuracy_tracker):
    """Softmax cross-entropy of `logits` `[B_local, K]` for integer `labels` `[B_local]`,
    `sum / B_global`, so that summed over replicas it is the global batch's mean;
    updates the two `Mean` trackers with this replica's loss and accuracy (weight
    B_local). The pretext heads and the online probe use it."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    terms = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    n_local = tf.shape(labels)[0]
    weight = tf.cast(n_local, tf.float32)
    loss_tracker.update_state(tf.reduce_mean(terms), sample_weight=weight)
    accuracy_tracker.update_state(tf.reduce_mean(hits), sample_weight=weight)
    return tf.reduce_sum(terms) / tf.cast(global_batch_size(n_local), tf.float32)


def rows_of_this_replica(n_local):
    """`(global batch size, first row of this replica's examples in the global batch)`."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return n_local, tf.constant(0, tf.int32)
    sizes = ctx.all_gather(tf.reshape(n_local, [1]), axis=0)
    replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return tf.reduce_sum(sizes), tf.reduce_sum(sizes[:replica])
