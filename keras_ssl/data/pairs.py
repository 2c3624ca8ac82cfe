"""Pair builder for Siamese networks: balanced same/different-class pairs in tf.data.

Every batch holds exactly half positive pairs (same class, `same = 1`) and half
negative pairs (`same = 0`) when the batch size is even. Pairs are drawn
afresh every epoch with stateless ops keyed by (seed, running example index),
so they are reproducible and differ between epochs; no Python loop over pairs.
"""

import numpy as np
import tensorflow as tf

from keras_ssl.data.augment import get_preset, simclr_augment, to_float01
from keras_ssl.data.finish import finished
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


def _tables(labels, what):
    """The class tables as tensors, after checking `labels` can make `what`."""
    if labels is None:
        raise UserError(f"{what} need a labelled split (same/different class)")
    table, counts, class_ids, position = _class_tables(np.asarray(labels))
    if len(counts) < 2:
        raise UserError(f"{what} need at least two classes (negatives are of different classes)")
    return [tf.constant(t) for t in (table, counts, class_ids, position)]


def pair_indices(labels, count, seed=0, offset=0, allow_self_pairs=False):
    """Indices `(i, j, same)` of `count` pairs; pair k is positive when k is even.

    Anchors `i` run over a fresh seeded permutation of the dataset each epoch;
    for a positive pair `j` is another example of the same class (the anchor
    itself only with `allow_self_pairs` or for a class with one example), for
    a negative one an example of a uniformly drawn other class. `offset` is
    the running index of the first pair (consecutive calls draw fresh pairs).
    """
    tables = _tables(labels, "pairs")
    k = tf.range(count, dtype=tf.int64) + offset
    return _pairs_from_draw(_draw(k, *tables, len(labels), seed, allow_self_pairs))


def _draw(k, table, counts, class_ids, position, n, seed, allow_self_pairs):
    """Anchors for running indices `k` (a seeded permutation per epoch), and their partners."""
    epoch, slot = k // n, k % n
    seed_t = tf.constant(seed, tf.int64)
    # a batch of consecutive k spans at most two epochs
    perm_first = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([seed_t, epoch[0]]))
    perm_last = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([seed_t, epoch[-1]]))
    anchor = tf.where(tf.equal(epoch, epoch[0]), tf.gather(perm_first, slot), tf.gather(perm_last, slot))
    return (anchor,) + _partners(anchor, k, table, counts, class_ids, position, seed, allow_self_pairs)


def _partners(anchor, k, table, counts, class_ids, position, seed, allow_self_pairs):
    """`(positive, negative, is_positive_pair)` for anchors at running indices `k`."""
    num_classes = tf.shape(counts, out_type=tf.int64)[0]
    u = tf.cast(tf.random.stateless_uniform([tf.size(k), 3], tf.stack([tf.constant(seed + 1, tf.int64), k[0]])),
                tf.float64)
    c = tf.gather(class_ids, anchor)
    # positive: another member of class c (itself only if allowed or alone)
    cnt = tf.gather(counts, c)
    if allow_self_pairs:
        pick = tf.cast(tf.floor(u[:, 0] * tf.cast(cnt, tf.float64)), tf.int64)
    else:
        pick = tf.cast(tf.floor(u[:, 0] * tf.cast(tf.maximum(cnt - 1, 1), tf.float64)), tf.int64)
        pick = tf.where(tf.logical_and(cnt > 1, pick >= tf.gather(position, anchor)), pick + 1, pick)
    pos_j = tf.gather_nd(table, tf.stack([c, tf.minimum(pick, cnt - 1)], axis=1))
    # negative: a member of another class, that class uniform among the others
    other = tf.cast(tf.floor(u[:, 1] * tf.cast(num_classes - 1, tf.float64)), tf.int64)
    other = tf.where(other >= c, other + 1, other)
    other_cnt = tf.gather(counts, other)
    neg_pick = tf.minimum(tf.cast(tf.floor(u[:, 2] * tf.cast(other_cnt, tf.float64)), tf.int64), other_cnt - 1)
    neg_j = tf.gather_nd(table, tf.stack([other, neg_pick], axis=1))
    return pos_j, neg_j, tf.equal(k % 2, 0)


def _pairs_from_draw(drawn):
    anchor, pos_j, neg_j, is_pos = drawn
    return anchor, tf.where(is_pos, pos_j, neg_j), tf.cast(is_pos, tf.float32)


def _anchor_batches(n, batch_size, seed):
    """`(step, anchors)` batches: every example an anchor once per epoch, reshuffled
    each epoch by tf.data's shuffle (outside the per-batch map)."""
    anchors = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    return anchors.batch(batch_size, drop_remainder=True).enumerate()


def pair_batches(split, batch_size, seed=0, augment=None, allow_self_pairs=False, repeat=True):
    """Batches `((x_a, x_b), same)` of balanced pairs from a labelled split.

    `x_a`, `x_b` are float32 in [0, 1]; with `augment` (a preset name or
    `AugmentConfig`) each side gets its own random SimCLR view. One epoch is
    `len(split) // batch_size` batches (each example is an anchor once).
    """
    if batch_size < 2 or batch_size % 2:
        raise UserError(f"pair batch size must be even and >= 2 (half positive, half negative), got {batch_size}")
    tables = _tables(split.labels, "pairs")
    images = tf.constant(split.images)
    config = get_preset(augment) if augment is not None else None

    def make(step, anchor):
        k = step * batch_size + tf.range(batch_size, dtype=tf.int64)
        i, j, same = _pairs_from_draw((anchor,) + _partners(anchor, k, *tables, seed, allow_self_pairs))
        x_a, x_b = tf.gather(images, i), tf.gather(images, j)
        if config is not None:
            x_a = simclr_augment(x_a, tf.stack([tf.constant(seed, tf.int64), 2 * step]), config)
            x_b = simclr_augment(x_b, tf.stack([tf.constant(seed, tf.int64), 2 * step + 1]), config)
        return (to_float01(x_a), to_float01(x_b)), same

    ds = _anchor_batches(len(split), batch_size, seed)
    if not repeat:
        ds = ds.take(len(split) // batch_size)
    return finished(ds.map(make, num_parallel_calls=tf.data.AUTOTUNE))


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
    return finished(ds.batch(batch_size).map(lambda x, y: ((to_float01(x[0]), to_float01(x[1])), y)))


def triplet_batches(split, batch_size, seed=0, augment=None):
    """Batches `(x_anchor, x_positive, x_negative)` for `TripletNetwork` (offline triplets).

    Every example is an anchor once per epoch; its positive is another image of
    its class, its negative an image of a uniformly drawn other class; fresh
    partners every epoch. Images float32 in [0, 1], optionally augmented.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    tables = _tables(split.labels, "triplets")
    images = tf.constant(split.images)
    config = get_preset(augment) if augment is not None else None

    def make(step, anchor):
        k = step * batch_size + tf.range(batch_size, dtype=tf.int64)
        pos_j, neg_j, _ = _partners(anchor, k, *tables, seed, False)
        out = [tf.gather(images, idx) for idx in (anchor, pos_j, neg_j)]
        if config is not None:
            out = [simclr_augment(x, tf.stack([tf.constant(seed, tf.int64), 3 * step + i]), config)
                   for i, x in enumerate(out)]
        return tuple(to_float01(x) for x in out)

    ds = _anchor_batches(len(split), batch_size, seed)
    return finished(ds.map(make, num_parallel_calls=tf.data.AUTOTUNE))
