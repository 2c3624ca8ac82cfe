"""Training batches of sequences: waveforms for the audio methods (CPC)."""

import tensorflow as tf

from keras_ssl.data.finish import finished


def waveform_batches(split, batch_size, seed=0):
    """An infinite, shuffled `tf.data` pipeline of `[batch_size, samples]` float32
    waveforms, reshuffled every epoch, whole batches only (no labels: CPC learns
    from the waveforms alone; the evaluator's probes read the split's labels)."""
    data = tf.data.Dataset.from_tensor_slices(tf.constant(split.waveforms, tf.float32))
    return finished(data.shuffle(len(split), seed=seed, reshuffle_each_iteration=True).repeat()
                    .batch(batch_size, drop_remainder=True))
