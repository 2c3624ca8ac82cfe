"""Training batches of sequences: waveforms for the audio methods (CPC)."""

import tensorflow as tf


def waveform_batches(split, batch_size, seed=0, with_labels=False):
    """An infinite, shuffled `tf.data` pipeline of `[batch_size, samples]` float32
    waveforms (with int32 labels when `with_labels` and the split has them),
    reshuffled every epoch, whole batches only."""
    waveforms = tf.constant(split.waveforms, tf.float32)
    if with_labels and split.labels is not None:
        data = tf.data.Dataset.from_tensor_slices((waveforms, tf.constant(split.labels, tf.int32)))
    else:
        data = tf.data.Dataset.from_tensor_slices(waveforms)
    return (data.shuffle(len(split), seed=seed, reshuffle_each_iteration=True).repeat()
            .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
