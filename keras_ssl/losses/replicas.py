"""Gathering across the replicas of a multi-replica step, for the losses whose
negatives come from the whole global batch."""

import tensorflow as tf


def gather_across_replicas(z):
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
