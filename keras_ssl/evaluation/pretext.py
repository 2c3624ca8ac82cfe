"""Pretext-task accuracy on a held-out split (rotation, relative position)."""

import tensorflow as tf


def pretext_accuracy(model, split, batch_size=256, seed=0):
    """Accuracy of a pretext model's own task on `split`'s images.

    RotationPrediction: every image in its four rotations (chance 1/4).
    RelativePosition: per image one (centre, neighbour) pair drawn with a
    fixed `seed` and the model's patch preset (chance 1/8).
    """
    from keras_ssl.data.augment import to_float01
    from keras_ssl.data.pretext import relative_position_pairs, rotate_all

    hits, total = 0, 0
    batches = tf.data.Dataset.from_tensor_slices((split.images,)).batch(batch_size).enumerate()
    for step, (images,) in batches:
        if hasattr(model, "rotation_probabilities"):
            x, y = rotate_all(tf.cast(images, tf.float32) / 255.0)
            probs = model.rotation_probabilities(x)
        else:
            centre, neighbour, y, _ = relative_position_pairs(
                to_float01(images), tf.stack([tf.constant(seed, tf.int64), step]), model.preset)
            probs = model.position_probabilities(centre, neighbour)
        pred = tf.argmax(probs, axis=-1, output_type=tf.int32)
        hits += int(tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int32)))
        total += int(tf.size(y))
    return hits / max(total, 1)
