"""Pretext-task builders: labels made from the images themselves.

Rotation (RotNet, Gidaris et al. 2018): every image appears in all four
rotations, 0, 90, 180 and 270 degrees counter-clockwise, made with exact
`rot90` (no interpolation); the label is the number of quarter turns.
Non-square images are rotated after a centre crop to a square, so all four
rotations share one shape.
"""

import numpy as np
import tensorflow as tf

from keras_ssl.data.augment import get_preset, simclr_augment, to_float01
from keras_ssl.errors import UserError


def _center_square(images):
    h, w = images.shape[1], images.shape[2]
    if h is None or w is None:
        raise UserError("rotation needs images with a static height and width")
    if h == w:
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[:, top:top + side, left:left + side, :]


def rotate_all(images):
    """`[B, H, W, C]` -> (`[4B, S, S, C]` with rotations k = 0, 1, 2, 3 as four
    consecutive blocks, int32 labels `[4B]` = k). Exact, any dtype."""
    images = _center_square(tf.convert_to_tensor(images))
    rotated = [tf.image.rot90(images, k=k) for k in range(4)]
    batch = tf.shape(images)[0]
    labels = tf.repeat(tf.range(4, dtype=tf.int32), batch)
    return tf.concat(rotated, axis=0), labels


def rotation_batches(split, batch_size, seed=0, augment=None, shuffle=True):
    """Batches `(images, rotation_labels)` of `4 * batch_size` images (every
    image in all four rotations), float32 in [0, 1]; optional SimCLR-style
    augmentation of the image before it is rotated (RotNet used none)."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    config = get_preset(augment) if augment is not None else None
    ds = tf.data.Dataset.from_tensor_slices(split.images)
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().batch(batch_size, drop_remainder=True).enumerate()

    def make(step, images):
        x = to_float01(images)
        if config is not None:
            x = simclr_augment(x, tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)]), config)
        return rotate_all(x)

    return ds.map(make, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def rotation_count(images):
    """How many images `rotate_all` makes from a batch (4 per image)."""
    return 4 * int(np.shape(images)[0])
