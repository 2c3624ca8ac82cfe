"""Pair builder for Siamese networks: balanced same/different-class pairs in tf.data.

Every batch holds exactly half positive pairs (same class, `same = 1`) and half
negative pairs (`same = 0`) when the batch size is even. Pairs are drawn
afresh every epoch with stateless ops keyed by (seed, running example index),
so they are reproducible and differ between epochs; no Python loop over pairs.
"""

import numpy as np
import tensorflow as tf

from keras_ssl.data.augment import get_preset, simclr_augment, to_float01
from keras_ssl.errors import UserError


def _class_tables(labels):
    """Per-class index table `[C, max_count]` (padded), counts `[C]`, and each
    example's class id and position inside its class."""
    classes, class_ids = np.unique(labels, return_inverse=True)
    counts = np.bincount(class_ids)
    table = np.zeros((len(classes), counts.max()), np.int64)
    position = np.zeros(len(labels), np.int64)
    filled = np.zeros(len(classes), np.int64)
    for i, c in enumerate(class_ids):
        table[c, filled[c]] = i
        position[i] = filled[c]
        filled[c] += 1
    return table, counts, class_ids, position


def pair_indices(labels, count, seed=0, offset=0, allow_self_pairs=False):
    """Indices `(i, j, same)` of `count` pairs; pair k is positive when k is even.

    Anchors `i` run over a permutation of the dataset (seeded); for a positive
    pair `j` is another example of the same class (the anchor itself only with
    `allow_self_pairs` or for a class with one example), for a negative one an
    example of a uniformly drawn other class. `offset` is the running index of
    the first pair (makes consecutive calls draw fresh pairs).
    """
    labels = np.asarray(labels)
    table, counts, class_ids, position = _class_tables(labels)
    if len(counts) < 2:
        raise UserError("pairs need at least two classes (negative pairs are of different classes)")
    k = tf.range(count, dtype=tf.int64) + offset
    return _pairs_from_draw(_draw(k, tf.constant(table), tf.constant(counts), tf.constant(class_ids),
                                  tf.constant(position), len(labels), seed, allow_self_pairs))


def _draw(k, table, counts, class_ids, position, n, seed, allow_self_pairs):
    """Vectorised pair draw for consecutive running indices `k` (int64 [B])."""
    seed = tf.constant(seed, tf.int64)
    num_classes = tf.shape(counts, out_type=tf.int64)[0]
    epoch, slot = k // n, k % n
    # Anchors: a fresh seeded permutation of the dataset every epoch (a batch
    # spans at most two epochs), so each example is an anchor once per epoch.
    perm_first = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([seed, epoch[0]]))
    perm_last = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([seed, epoch[-1]]))
    anchor = tf.where(tf.equal(epoch, epoch[0]), tf.gather(perm_first, slot), tf.gather(perm_last, slot))
    u = tf.cast(tf.random.stateless_uniform([tf.size(k), 3], tf.stack([seed + 1, k[0]])), tf.float64)
    c = tf.gather(class_ids, anchor)
    is_pos = tf.equal(k % 2, 0)
    # positive: another member of class c (itself only if allowed or alone)
    cnt = tf.gather(counts, c)
    if allow_self_pairs:
        pick = tf.cast(tf.floor(u[:, 0] * tf.cast(cnt, tf.float64)), tf.int64)
    else:
        others = tf.maximum(cnt - 1, 1)
        pick = tf.cast(tf.floor(u[:, 0] * tf.cast(others, tf.float64)), tf.int64)
        pick = tf.where(tf.logical_and(cnt > 1, pick >= tf.gather(position, anchor)), pick + 1, pick)
    pos_j = tf.gather_nd(table, tf.stack([c, tf.minimum(pick, cnt - 1)], axis=1))
    # negative: a member of another class, that class uniform among the others
    other = tf.cast(tf.floor(u[:, 1] * tf.cast(num_classes - 1, tf.float64)), tf.int64)
    other = tf.where(other >= c, other + 1, other)
    other_cnt = tf.gather(counts, other)
    neg_pick = tf.minimum(tf.cast(tf.floor(u[:, 2] * tf.cast(other_cnt, tf.float64)), tf.int64), other_cnt - 1)
    neg_j = tf.gather_nd(table, tf.stack([other, neg_pick], axis=1))
    return anchor, pos_j, neg_j, is_pos


def _pairs_from_draw(drawn):
    anchor, pos_j, neg_j, is_pos = drawn
    return anchor, tf.where(is_pos, pos_j, neg_j), tf.cast(is_pos, tf.float32)


def pair_batches(split, batch_size, seed=0, augment=None, allow_self_pairs=False, repeat=True):
    """Batches `((x_a, x_b), same)` of balanced pairs from a labelled split.

    `x_a`, `x_b` are float32 in [0, 1]; with `augment` (a preset name or
    `AugmentConfig`) each side gets its own random SimCLR view. One epoch is
    `len(split) // batch_size` batches (each example is an anchor once).
    """
    if split.labels is None:
        raise UserError("pairs need a labelled split (same/different class)")
    if batch_size < 2 or batch_size % 2:
        raise UserError(f"pair batch size must be even and >= 2 (half positive, half negative), got {batch_size}")
    table, counts, class_ids, position = _class_tables(split.labels)
    if len(counts) < 2:
        raise UserError("pairs need at least two classes (negative pairs are of different classes)")
    images = tf.constant(split.images)
    n = len(split)
    consts = [tf.constant(t) for t in (table, counts, class_ids, position)]
    config = get_preset(augment) if augment is not None else None
    steps = n // batch_size
    ds = tf.data.Dataset.range(steps * batch_size if not repeat else np.iinfo(np.int64).max // 2)
    ds = ds.batch(batch_size, drop_remainder=True)

    def make(k):
        i, j, same = _pairs_from_draw(_draw(k, *consts, n, seed, allow_self_pairs))
        x_a, x_b = tf.gather(images, i), tf.gather(images, j)
        if config is not None:
            step = k[0] // batch_size
            x_a = simclr_augment(x_a, tf.stack([tf.constant(seed, tf.int64), 2 * step]), config)
            x_b = simclr_augment(x_b, tf.stack([tf.constant(seed, tf.int64), 2 * step + 1]), config)
        return (to_float01(x_a), to_float01(x_b)), same

    return ds.map(make, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def user_pairs(x_a, x_b, same, batch_size, shuffle=True, seed=0):
    """A user's own pairs (arrays) as batches `((x_a, x_b), same)`, validated."""
    x_a, x_b, same = np.asarray(x_a), np.asarray(x_b), np.asarray(same)
    if x_a.shape != x_b.shape:
        raise UserError(f"pair inputs must have the same shape, got {x_a.shape} and {x_b.shape}")
    if len(same) != len(x_a):
        raise UserError(f"{len(x_a)} pairs but {len(same)} labels")
    if not np.all(np.isin(same, (0, 1))):
        raise UserError("pair labels must be 0 (different class) or 1 (same class)")
    ds = tf.data.Dataset.from_tensor_slices(((x_a, x_b), same.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(same), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: ((to_float01(x[0]), to_float01(x[1])), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def triplet_batches(split, batch_size, seed=0, augment=None):
    """Batches `(x_anchor, x_positive, x_negative)` for `TripletNetwork` (offline triplets).

    Every example is an anchor once per epoch; its positive is another image of
    its class, its negative an image of a uniformly drawn other class; fresh
    partners every epoch. Images float32 in [0, 1], optionally augmented.
    """
    if split.labels is None:
        raise UserError("triplets need a labelled split")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    table, counts, class_ids, position = _class_tables(split.labels)
    if len(counts) < 2:
        raise UserError("triplets need at least two classes")
    images = tf.constant(split.images)
    consts = [tf.constant(t) for t in (table, counts, class_ids, position)]
    config = get_preset(augment) if augment is not None else None
    ds = tf.data.Dataset.range(np.iinfo(np.int64).max // 2).batch(batch_size, drop_remainder=True)

    def make(k):
        anchor, pos_j, neg_j, _ = _draw(k, *consts, len(split), seed, False)
        out = [tf.gather(images, idx) for idx in (anchor, pos_j, neg_j)]
        if config is not None:
            step = k[0] // batch_size
            out = [simclr_augment(x, tf.stack([tf.constant(seed, tf.int64), 3 * step + i]), config)
                   for i, x in enumerate(out)]
        return tuple(to_float01(x) for x in out)

    return ds.map(make, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
