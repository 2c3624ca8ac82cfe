"""View builders: turn a source split into the batches a method trains on.

The pipeline is one straight line of tensor ops: in-memory uint8 images ->
shuffle -> repeat -> batch -> per-batch augmentation (parallel `map`, stateless
seeds from the batch index, so a seed fixes every view) -> prefetch. No Python
runs per element.
"""

import numpy as np
import tensorflow as tf

from keras_ssl.data.augment import get_preset, simclr_augment, to_float01
from keras_ssl.data.finish import finished
from keras_ssl.errors import UserError


def _check_batch(split, batch_size):
    if batch_size < 2:
        raise UserError(f"batch size must be at least 2, got {batch_size}")
    if len(split) < batch_size:
        raise UserError(f"the split has {len(split)} images, fewer than one batch of {batch_size}; "
                        "lower the batch size")


def simclr_views(split, batch_size, augment="imagenet", seed=0, with_labels=True, shuffle=True,
                 repeat=True):
    """Batches of two augmented views per image: `((view_a, view_b), labels)`.

    Views are float32 in [0, 1]. `labels` are included when `with_labels` and
    the split is labelled (for SimCLR's online linear probe); otherwise the
    element is `(view_a, view_b)`. Batches are full (`drop_remainder`), so
    every step sees the same number of negatives.
    """
    _check_batch(split, batch_size)
    config = get_preset(augment)
    use_labels = with_labels and split.labels is not None
    tensors = (split.images, split.labels.astype(np.int32)) if use_labels else (split.images,)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True).enumerate()

    def make_views(step, element):
        images = element[0]
        step = tf.cast(step, tf.int64)
        view_a = simclr_augment(images, tf.stack([tf.constant(seed, tf.int64), 2 * step]), config)
        view_b = simclr_augment(images, tf.stack([tf.constant(seed, tf.int64), 2 * step + 1]), config)
        if use_labels:
            return (view_a, view_b), element[1]
        return view_a, view_b

    return finished(ds.map(make_views, num_parallel_calls=tf.data.AUTOTUNE))


def eval_batches(split, batch_size=512):
    """Unaugmented batches `(float32 images in [0, 1], labels)` in split order.

    This is the evaluation preprocessing, and exactly what the exported
    SavedModel does to decoded pixels (uint8 / 255).
    """
    tensors = (split.images,) if split.labels is None else (split.images, split.labels.astype(np.int32))
    ds = tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)
    return finished(ds.map(lambda *t: (to_float01(t[0]),) + tuple(t[1:]), num_parallel_calls=tf.data.AUTOTUNE))


def image_batches(split, batch_size, seed=0):
    """An infinite, shuffled pipeline of unaugmented uint8 image batches (whole batches
    only, reshuffled every epoch): what methods that make their own inputs from the
    images (CPC's patch grid) train on."""
    _check_batch(split, batch_size)
    ds = tf.data.Dataset.from_tensor_slices(split.images)
    ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True).repeat()
    return finished(ds.batch(batch_size, drop_remainder=True))
