"""Pretext-task accuracy (rotation prediction)."""

import tensorflow as tf


def pretext_accuracy(model, split, batch_size=256):
    """Rotation-prediction accuracy on a split: every image in its four rotations."""
    from keras_ssl.data.pretext import rotate_all

    hits, total = 0, 0
    for (images,) in tf.data.Dataset.from_tensor_slices((split.images,)).batch(batch_size):
        x, y = rotate_all(tf.cast(images, tf.float32) / 255.0)
        pred = tf.argmax(model.rotation_probabilities(x), axis=-1, output_type=tf.int32)
        hits += int(tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int32)))
        total += int(tf.size(y))
    return hits / max(total, 1)
