"""Pair builder balance/labels, verification metrics vs scikit-learn, EER, one-shot trials."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from keras_ssl.data import load_source
from keras_ssl.data.pairs import pair_batches, pair_indices, user_pairs
from keras_ssl.errors import UserError
from keras_ssl.evaluation import (best_threshold, equal_error_rate, one_shot_accuracy, roc_plot,
                                  verification_metrics)


def test_pairs_balanced_labels_correct_no_self_pairs():
    labels = np.repeat(np.arange(5), 20)
    i, j, same = (t.numpy() for t in pair_indices(labels, 1000, seed=3))
    assert same.mean() == 0.5
    assert np.all(labels[i][same == 1] == labels[j][same == 1])
    assert np.all(labels[i][same == 0] != labels[j][same == 0])
    assert not np.any(i == j)
    # every example is an anchor exactly once per epoch (100 examples)
    for epoch in range(10):
        assert sorted(i[epoch * 100:(epoch + 1) * 100]) == list(range(100))
    # fresh partners in the next call
    i2, j2, _ = (t.numpy() for t in pair_indices(labels, 1000, seed=3, offset=1000))
    assert not np.array_equal(j, j2)


def test_self_pairs_only_when_asked_or_alone():
    labels = np.array([0, 0, 1, 1, 2])  # class 2 has a single example
    i, j, same = (t.numpy() for t in pair_indices(labels, 200, seed=0))
    assert set(i[i == j]) <= {4}
    i, j, same = (t.numpy() for t in pair_indices(np.repeat([0, 1], 2), 400, seed=0, allow_self_pairs=True))
    assert np.any((i == j) & (same == 1))


def test_pair_batches_and_errors():
    ds = load_source("digits")
    (a, b), same = next(iter(pair_batches(ds.train, 32, seed=0, augment="fashion_mnist")))
    assert a.shape == b.shape == (32, 8, 8, 1) and float(same.numpy().mean()) == 0.5
    assert 0.0 <= float(a.numpy().min()) and float(a.numpy().max()) <= 1.0
    with pytest.raises(UserError, match="even"):
        pair_batches(ds.train, 31)
    with pytest.raises(UserError, match="two classes"):
        pair_indices(np.zeros(5), 4)
    with pytest.raises(UserError, match="same shape"):
        user_pairs(np.zeros((4, 8, 8, 1)), np.zeros((4, 8, 9, 1)), [0, 1, 0, 1], 2)
    with pytest.raises(UserError, match="0 .* or 1"):
        user_pairs(np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 1)), [0, 2], 2)


def test_verification_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    same = rng.integers(0, 2, 500)
    sim = same * 1.0 + rng.normal(size=500)
    m = verification_metrics(same, sim, same, sim)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(same, sim))
    # the calibrated threshold is the best achievable on the same data
    candidates = np.unique(sim)
    best = max(np.mean((sim >= t) == same) for t in candidates)
    assert m["verification_accuracy"] == pytest.approx(best)
    accept = sim >= m["similarity_threshold"]
    assert m["false_accept_rate"] == pytest.approx(np.mean(accept[same == 0]))
    assert m["false_reject_rate"] == pytest.approx(np.mean(~accept[same == 1]))


def test_equal_error_rate_constructed_case():
    # 10 positives, 10 negatives; exactly 2 negatives score above 2 positives:
    # at the crossing FAR = FRR = 0.2.
    pos = np.array([10, 9, 8, 7, 6, 5, 4, 3, 0.5, 0.4])
    neg = np.array([2.5, 2.4, 0.3, 0.2, 0.1, 0, -1, -2, -3, -4])
    same = np.r_[np.ones(10), np.zeros(10)]
    eer, _ = equal_error_rate(same, np.r_[pos, neg])
    assert eer == pytest.approx(0.2)
    perfect, _ = equal_error_rate(same, np.r_[pos + 100, neg])
    assert perfect == pytest.approx(0.0)
    assert best_threshold(same, np.r_[pos + 100, neg]) > 2.5


def test_one_shot_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    clustered = np.eye(10)[labels] * 5 + rng.normal(size=(300, 10)) * 0.1
    assert one_shot_accuracy(clustered, labels, 10, trials=500) == 1.0
    noise = rng.normal(size=(300, 10))
    acc = one_shot_accuracy(noise, labels, 5, trials=4000)
    assert abs(acc - 0.2) < 0.03  # chance
    constant = np.zeros((300, 4))  # all ties: must not favour the true class
    assert abs(one_shot_accuracy(constant, labels, 4, trials=4000) - 0.25) < 0.03
    assert one_shot_accuracy(clustered, labels, 3, trials=200, classes=[7, 8, 9]) == 1.0
    with pytest.raises(UserError, match="n_way"):
        one_shot_accuracy(clustered, labels, 11)
    path = roc_plot(np.r_[np.ones(5), np.zeros(5)], np.arange(10.0)[::-1], str(tmp_path / "roc.png"))
    assert (tmp_path / "roc.png").stat().st_size > 1000 and path.endswith("roc.png")
