"""Pretext-task accuracy on a held-out split (rotation, relative position)."""

import tensorflow as tf

from keras_ssl.data.finish import finished


def pretext_accuracy(model, split, batch_size=256, seed=0):
    """Accuracy of a pretext model's own task on `split`'s images, from its
    `pretext_predictions(images, seed) -> (probabilities, labels)`.

    RotationPrediction: every image in its four rotations (chance 1/4).
    RelativePosition: per image one (centre, neighbour) pair drawn with a
    fixed `seed` and the model's patch preset (chance 1/8).
    """
    hits, total = 0, 0
    batches = finished(tf.data.Dataset.from_tensor_slices((split.images,)).batch(batch_size).enumerate())
    for step, (images,) in batches:
        probs, y = model.pretext_predictions(images, tf.stack([tf.constant(seed, tf.int64), step]))
        pred = tf.argmax(probs, axis=-1, output_type=tf.int32)
        hits += int(tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int32)))
        total += int(tf.size(y))
    return hits / max(total, 1)
