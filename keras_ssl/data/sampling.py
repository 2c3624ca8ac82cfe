"""Class-balanced P x K batches for online triplet mining (Hermans et al. 2017).

Every batch holds exactly P classes with K images each. Over an epoch every
image is visited once (classes with fewer images than their share are
resampled from their own images), and batches are made in `tf.data` from a
per-epoch plan of index tensors, so nothing runs in Python per batch.
"""

import numpy as np
import tensorflow as tf

from keras_ssl.data.augment import get_preset, simclr_augment, to_float01
from keras_ssl.data.finish import finished
from keras_ssl.errors import UserError


def pk_plan(labels, p, k, seed=0, epoch=0):
    """Index array `[num_batches, P * K]` for one epoch.

    Each class's images are shuffled and cut into groups of K (the last group
    topped up with random images of the same class); groups are shuffled and
    dealt P at a time into batches with P distinct classes. Every image
    appears at least once per epoch.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if k < 2:
        raise UserError(f"K (images per class) must be >= 2 so every anchor has a positive, got {k}")
    if p < 2:
        raise UserError(f"P (classes per batch) must be >= 2 so every anchor has a negative, got {p}")
    if p > len(classes):
        raise UserError(f"P = {p} classes per batch, but the data has only {len(classes)} classes")
    rng = np.random.default_rng([seed, epoch])
    groups = {}
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        short = (-len(idx)) % k
        if short:
            idx = np.concatenate([idx, rng.choice(np.flatnonzero(labels == c), short, replace=True)])
        groups[c] = list(idx.reshape(-1, k))
    batches = []
    while True:
        available = [c for c in classes if groups[c]]
        if len(available) < p:
            break
        # draw classes weighted by how many groups they still have (large classes first to drain)
        weights = np.array([len(groups[c]) for c in available], float)
        chosen = rng.choice(available, p, replace=False, p=weights / weights.sum())
        batches.append(np.concatenate([groups[c].pop() for c in chosen]))
    # leftover groups (fewer than P classes remain): fill batches with other classes' random images
    leftovers = [(c, g) for c in classes for g in groups[c]]
    for c, g in leftovers:
        others = rng.choice([o for o in classes if o != c], p - 1, replace=False)
        extra = [rng.choice(np.flatnonzero(labels == o), k, replace=len(np.flatnonzero(labels == o)) < k)
                 for o in others]
        batches.append(np.concatenate([g] + extra))
    order = rng.permutation(len(batches))
    return np.stack([batches[i] for i in order]).astype(np.int64)


def pk_batches(split, p, k, seed=0, augment=None, epochs=1):
    """Batches `(images, labels)` of P classes x K images, float32 in [0, 1].

    The plans of `epochs` epochs (each a fresh grouping) are made up front
    (int64 indices: 8 bytes per image per epoch) and then repeated, so the
    dataset never ends. `augment`: optional SimCLR preset applied per image.
    Under a strategy with R replicas, Keras splits each global batch into R
    consecutive slices; with P divisible by R every replica gets whole classes
    (K images each), so local mining still has positives and negatives.
    """
    if split.labels is None:
        raise UserError("P x K batches need a labelled split")
    plans = np.concatenate([pk_plan(split.labels, p, k, seed, e) for e in range(max(1, epochs))])
    images = tf.constant(split.images)
    labels = tf.constant(split.labels.astype(np.int32))
    config = get_preset(augment) if augment is not None else None
    ds = tf.data.Dataset.from_tensor_slices(plans).repeat()

    def gather(step, index):
        x = tf.gather(images, index)
        if config is not None:
            x = simclr_augment(x, tf.stack([tf.constant(seed, tf.int64), step]), config)
        return to_float01(x), tf.gather(labels, index)

    return finished(ds.enumerate().map(gather, num_parallel_calls=tf.data.AUTOTUNE))
