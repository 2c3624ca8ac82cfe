"""Helpers shared by every method's train/test step."""

import tensorflow as tf

from keras_ssl.errors import UserError


def split_data(data):
    """`x` or `(x, y)` or `(x, y, sample_weight)` -> `(x, y)`.

    A 2-tuple whose first item is itself a tuple/list is `(inputs, labels)`;
    a 2-tuple of tensors is a pair of inputs without labels.
    """
    if isinstance(data, dict):
        raise UserError("dict batches are not supported; pass x or (x, y)")
    if not isinstance(data, (tuple, list)):
        return data, None
    if len(data) == 2 and not isinstance(data[0], (tuple, list)) and _is_image_batch(data[1]):
        return tuple(data), None
    if len(data) in (2, 3):
        return data[0], data[1]
    if len(data) == 1:
        return data[0], None
    raise UserError(f"a batch must be x, (x, y) or (x, y, sample_weight), got {len(data)} items")


def _is_image_batch(t):
    return getattr(t, "shape", None) is not None and t.shape.rank == 4


def global_batch_size(local_size):
    """Sum of `local_size` over the replicas of the current replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tf.cast(local_size, tf.int32)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local_size, tf.int32))
