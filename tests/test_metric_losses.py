"""Contrastive, triplet and batch-triplet losses against brute-force NumPy computations."""

import itertools
import zlib

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.errors import UserError


def np_contrastive(same, a, b, margin, hinge):
    d2 = np.sum((a.astype(np.float64) - b) ** 2, axis=1)
    d = np.sqrt(d2)
    neg = np.maximum(0, margin - d) ** 2 if hinge == "distance" else np.maximum(0, margin ** 2 - d2)
    return np.mean(same * d2 + (1 - same) * neg)


@pytest.mark.parametrize("hinge", ["distance", "squared"])
def test_contrastive_matches_numpy(hinge):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 32, 5)).astype(np.float32) * 0.5
    same = rng.integers(0, 2, 32).astype(np.float32)
    got = float(losses.contrastive(same, a, b, margin=1.5, negative_hinge=hinge))
    np.testing.assert_allclose(got, np_contrastive(same, a, b, 1.5, hinge), rtol=1e-5)
    wrapped = losses.Contrastive(margin=1.5, negative_hinge=hinge)(same, np.stack([a, b], axis=1))
    np.testing.assert_allclose(float(wrapped), got, rtol=1e-5)


def test_contrastive_hand_cases_and_finite_gradient_at_zero():
    a = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    b = np.array([[3.0, 4.0], [3.0, 4.0]], np.float32)  # d = 5
    assert float(losses.contrastive([1.0, 1.0], a, b)) == pytest.approx(25.0)  # positive: d^2
    assert float(losses.contrastive([0.0, 0.0], a, b, margin=2.0)) == 0.0  # negative beyond margin
    x = tf.Variable(np.ones((2, 3), np.float32))
    for same in ([1.0, 0.0], [0.0, 0.0]):
        for hinge in ("distance", "squared"):
            with tf.GradientTape() as tape:
                loss = losses.contrastive(same, x, tf.identity(x), negative_hinge=hinge)
            grad = tape.gradient(loss, x)
            assert np.all(np.isfinite(grad.numpy())), (same, hinge)


def test_contrastive_bad_labels_and_hinge():
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be 0 .* or 1"):
        losses.contrastive([0.0, 2.0], np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(UserError, match="negative_hinge"):
        losses.contrastive([0.0], np.zeros((1, 3)), np.ones((1, 3)), negative_hinge="hinge")


def test_triplet_matches_numpy():
    rng = np.random.default_rng(1)
    a, p, n = rng.normal(size=(3, 16, 4)).astype(np.float32)
    d_ap = np.sum((a - p) ** 2, 1)
    d_an = np.sum((a - n) ** 2, 1)
    np.testing.assert_allclose(float(losses.triplet(a, p, n, 0.3)), np.mean(np.maximum(0, d_ap - d_an + 0.3)),
                               rtol=1e-5)


def np_batch_triplet(labels, emb, margin, mining, soft):
    """Brute force over all (a, p, n) index triples."""
    emb = emb.astype(np.float64)
    d = np.sum((emb[:, None] - emb[None]) ** 2, axis=-1)
    b = len(labels)
    hinge = (lambda x: np.log1p(np.exp(x))) if soft else (lambda x: max(0.0, x + margin))
    pos = lambda a: [p for p in range(b) if p != a and labels[p] == labels[a]]
    neg = lambda a: [n for n in range(b) if labels[n] != labels[a]]
    values = []
    if mining == "hard":
        for a in range(b):
            if pos(a) and neg(a):
                values.append(hinge(max(d[a, p] for p in pos(a)) - min(d[a, n] for n in neg(a))))
        return np.mean(values) if values else 0.0
    if mining == "semi_hard":
        for a in range(b):
            if not neg(a):
                continue
            for p in pos(a):
                farther = [d[a, n] for n in neg(a) if d[a, n] > d[a, p]]
                dn = min(farther) if farther else max(d[a, n] for n in neg(a))
                values.append(hinge(d[a, p] - dn))
        return np.mean(values) if values else 0.0
    for a, p, n in itertools.product(range(b), repeat=3):
        if p in pos(a) and n in neg(a):
            v = hinge(d[a, p] - d[a, n])
            if v > 0:
                values.append(v)
    return np.mean(values) if values else 0.0


def _seed(*parts):
    """A seed fixed by the test's parameters (`hash()` of a str changes per process)."""
    return zlib.crc32(repr(parts).encode())


@pytest.mark.parametrize("mining", ["semi_hard", "hard", "all"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("case", ["random", "lonely_anchors", "one_class", "ties"])
def test_batch_triplet_matches_brute_force(mining, soft, case):
    seed = _seed(mining, soft, case)
    rng = np.random.default_rng(seed)
    if case in ("random", "ties"):
        labels = rng.integers(0, 4, 12)
    elif case == "lonely_anchors":  # classes 7 and 8 have one image each: no positive
        labels = np.array([0, 0, 0, 1, 1, 7, 2, 2, 8, 1])
    else:  # no negatives at all
        labels = np.zeros(6, int)
    if case == "ties":  # points of a small integer grid: exact float32 distances, many equal
        emb = rng.integers(-2, 3, size=(len(labels), 2)).astype(np.float32)
    else:
        emb = rng.normal(size=(len(labels), 3)).astype(np.float32) * 0.4
    got = float(losses.batch_triplet(labels, emb, margin=0.5, mining=mining, soft=soft))
    np.testing.assert_allclose(got, np_batch_triplet(labels, emb, 0.5, mining, soft), rtol=1e-4, atol=1e-6,
                               err_msg=f"seed {seed}")
    wrapped = losses.BatchTriplet(margin=0.5, mining=mining, soft=soft)(labels, emb)
    np.testing.assert_allclose(float(wrapped), got, rtol=1e-6, err_msg=f"seed {seed}")


def test_semi_hard_negative_is_strictly_farther_than_the_positive():
    """FaceNet's semi-hard negative satisfies d(a,n)^2 > d(a,p)^2, strictly: a negative exactly
    as far as the positive is not it. On a line: a = 0, p = 1, n_tie = -1 (as far as p), n = 2."""
    labels = np.array([0, 0, 1, 1])
    emb = np.array([[0.0], [1.0], [-1.0], [2.0]], np.float32)
    values, counted = (t.numpy() for t in losses.batch_triplet_terms(labels, emb, 0.5, "semi_hard"))
    # (a, p): the semi-hard negative is n (d^2 = 4), not n_tie (d^2 = 1): max(0, 1 - 4 + 0.5) = 0
    assert values[0, 1] == 0.0, values
    # (p, a): d^2 = 1; negatives of p at d^2 = 4 (n_tie) and 1 (n, a tie): n_tie it is, 1 - 4 + 0.5 < 0
    assert values[1, 0] == 0.0, values
    # (n_tie, n): d^2 = 9; negatives of n_tie at 1 (a) and 4 (p), none farther: the farthest, p
    assert values[2, 3] == pytest.approx(9.0 - 4.0 + 0.5), values
    assert counted.tolist() == [[False, True, False, False], [True, False, False, False],
                                [False, False, False, True], [False, False, True, False]]
    assert values[3, 2] == pytest.approx(9.0 - 4.0 + 0.5), values  # the same from n's side
    # the loss: the mean over the four counted pairs (a tie taken as semi-hard would give 0.5 twice)
    assert float(losses.batch_triplet(labels, emb, 0.5, "semi_hard")) == pytest.approx((5.5 + 5.5) / 4)


@pytest.mark.parametrize("mining", ["semi_hard", "hard", "all"])
def test_batch_triplet_finite_gradients_when_embeddings_coincide(mining):
    x = tf.Variable(np.ones((6, 4), np.float32))
    with tf.GradientTape() as tape:
        loss = losses.batch_triplet([0, 0, 1, 1, 2, 2], x, mining=mining)
    grad = tape.gradient(loss, x)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad.numpy()))


def test_batch_triplet_rejects_unknown_mining():
    with pytest.raises(UserError, match="mining must be one of"):
        losses.batch_triplet([0, 1], np.zeros((2, 2)), mining="semihard")
    with pytest.raises(UserError, match="mining"):
        losses.BatchTriplet(mining="easy")


def np_multi_similarity(labels, emb, alpha, beta, base, epsilon):
    """Wang et al. 2019 anchor by anchor, as the authors' loop: mine, skip an anchor that keeps
    no positive or no negative, average over the anchors that have both kinds of pairs."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = e @ e.T
    total, anchors = 0.0, 0
    for i in range(len(labels)):
        pos = [s[i, j] for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        neg = [s[i, k] for k in range(len(labels)) if labels[k] != labels[i]]
        if not pos or not neg:
            continue
        anchors += 1
        kept_neg = [v for v in neg if v + epsilon > min(pos)]
        kept_pos = [v for v in pos if v - epsilon < max(neg)]
        if not kept_neg or not kept_pos:
            continue
        total += np.log1p(np.sum(np.exp(-alpha * (np.array(kept_pos) - base)))) / alpha
        total += np.log1p(np.sum(np.exp(beta * (np.array(kept_neg) - base)))) / beta
    return total / max(anchors, 1)


@pytest.mark.parametrize("case", range(4))
def test_multi_similarity_matches_numpy(case):
    rng = np.random.default_rng(_seed("ms", case))
    labels = rng.integers(0, 3, size=12)
    labels[-1] = 7  # an anchor without a positive: not counted
    emb = rng.normal(size=(12, 5)).astype(np.float32)
    if case == 3:
        emb[1] = emb[0] * 3.0  # two images of one class that coincide in direction
    for alpha, beta, base, epsilon in ((2.0, 50.0, 0.5, 0.1), (1.0, 10.0, 0.2, 0.3)):
        values, counted, kept = losses.multi_similarity_terms(tf.constant(labels), tf.constant(emb), alpha, beta,
                                                              base, epsilon)
        got = float(tf.reduce_sum(values) / tf.reduce_sum(tf.cast(counted, tf.float32)))
        np.testing.assert_allclose(got, np_multi_similarity(labels, emb, alpha, beta, base, epsilon), rtol=1e-4,
                                   atol=1e-6)
        assert not bool(counted[-1]) and not np.diag(kept.numpy()).any()


def test_multi_similarity_mines_only_the_informative_pairs_and_has_finite_gradients():
    """Two tight classes far apart: every pair is easy, nothing is kept and the loss is 0;
    moving one negative close to an anchor keeps that pair. Coinciding embeddings keep the
    gradient finite."""
    labels = tf.constant([0, 0, 1, 1])
    easy = tf.constant([[1.0, 0.0], [0.99, 0.14], [-1.0, 0.0], [-0.99, -0.14]])
    values, counted, kept = losses.multi_similarity_terms(labels, easy)
    assert float(tf.reduce_sum(values)) == 0.0 and not kept.numpy().any() and counted.numpy().all()
    hard = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0]])
    _, _, kept = losses.multi_similarity_terms(labels, hard)
    assert kept.numpy()[0, 2] and kept.numpy()[0, 1]  # the close negative, and the positive farther than it
    same = tf.Variable(tf.ones((4, 3)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.multi_similarity_terms(labels, same)[0])
    assert np.isfinite(tape.gradient(loss, same).numpy()).all()


def np_multi_similarity_kept(labels, emb, epsilon):
    """The pairs Multi-Similarity's mining keeps, `[n, n]` bool, anchor by anchor (only anchors
    with a positive and a negative keep any): negatives with s + epsilon > the hardest positive,
    positives with s - epsilon < the hardest negative."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    s = e @ e.T
    n = len(labels)
    kept = np.zeros((n, n), bool)
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [k for k in range(n) if labels[k] != labels[i]]
        if not pos or not neg:
            continue
        for k in neg:
            kept[i, k] = s[i, k] + epsilon > min(s[i, j] for j in pos)
        for j in pos:
            kept[i, j] = s[i, j] - epsilon < max(s[i, k] for k in neg)
    return kept


@pytest.mark.parametrize("case", range(3))
def test_multi_similarity_keeps_the_pairs_of_its_rule_and_the_triplet_model_reports_their_share(case):
    """`kept` is the mining rule's pair set, and OnlineTriplet's `active_fraction` under
    `objective="multi_similarity"` is its size over the n (n - 1) ordered pairs of the batch."""
    from keras_ssl.encoders import small_cnn
    from keras_ssl.models import OnlineTriplet

    rng = np.random.default_rng(_seed("ms_kept", case))
    labels = rng.integers(0, 3, size=10)
    labels[-1] = 7  # an anchor without a positive keeps nothing
    emb = rng.normal(size=(10, 4)).astype(np.float32)
    want = np_multi_similarity_kept(labels, emb, 0.1)
    _, _, kept = losses.multi_similarity_terms(tf.constant(labels), tf.constant(emb))
    np.testing.assert_array_equal(kept.numpy(), want)
    model = OnlineTriplet(small_cnn((8, 8, 1), width_multiplier=0.25), embedding_dim=4, objective="multi_similarity")
    _, _, active = model._terms(tf.constant(labels), tf.constant(emb))
    assert want.any() and float(active) == pytest.approx(want.sum() / (10 * 9), rel=1e-6)
