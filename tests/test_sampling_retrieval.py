"""P x K sampler and retrieval metrics against NumPy brute force."""

import os

import numpy as np
import pytest

from keras_ssl.data import load_source
from keras_ssl.data.sampling import pk_batches, pk_plan
from keras_ssl.errors import UserError
from keras_ssl.evaluation import retrieval_metrics


@pytest.mark.parametrize("p, k", [(4, 2), (3, 5), (10, 4)])
def test_pk_plan_batches_and_coverage(p, k):
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(rng.integers(3, 40, 10))])
    plan = pk_plan(labels, p, k, seed=1)
    assert plan.shape[1] == p * k
    for batch in plan:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == p and np.all(counts == k)
    assert set(plan.ravel()) == set(range(len(labels)))  # every image visited
    assert not np.array_equal(plan, pk_plan(labels, p, k, seed=1, epoch=1))


def test_pk_errors_and_dataset():
    labels = np.repeat(np.arange(3), 5)
    with pytest.raises(UserError, match="K .* >= 2"):
        pk_plan(labels, 2, 1)
    with pytest.raises(UserError, match="only 3 classes"):
        pk_plan(labels, 4, 2)
    ds = load_source("digits")
    x, y = next(iter(pk_batches(ds.train, 4, 3, seed=0, augment="fashion_mnist")))
    assert x.shape == (12, 8, 8, 1) and sorted(np.bincount(y.numpy())[np.bincount(y.numpy()) > 0]) == [3] * 4


def brute_force(emb, labels, ks):
    d = np.sum((emb[:, None] - emb[None]) ** 2, -1)
    np.fill_diagonal(d, np.inf)
    out = {"p1": [], "rp": [], "map": [], **{k: [] for k in ks}}
    for i in range(len(labels)):
        order = np.argsort(d[i], kind="stable")[:-1]
        rel = labels[order] == labels[i]
        r = int(np.sum(labels == labels[i])) - 1
        if r == 0:
            continue
        out["p1"].append(rel[0])
        out["rp"].append(rel[:r].mean())
        out["map"].append(sum(rel[:j + 1].mean() for j in range(r) if rel[j]) / r)
        for k in ks:
            out[k].append(rel[:k].any())
    return out


def test_retrieval_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    labels[0] = 9  # a class with a single member: no relevant items, skipped
    emb = rng.normal(size=(60, 5)) + labels[:, None] * 0.5
    got = retrieval_metrics(emb, labels, ks=(1, 5, 10), chunk=16)
    ref = brute_force(emb, labels, (1, 5, 10))
    assert got["retrieval_queries"] == 59
    assert got["precision_at_1"] == pytest.approx(np.mean(ref["p1"]))
    assert got["r_precision"] == pytest.approx(np.mean(ref["rp"]))
    assert got["map_at_r"] == pytest.approx(np.mean(ref["map"]))
    for k in (1, 5, 10):
        assert got["recall_at_k"][str(k)] == pytest.approx(np.mean(ref[k]))


def test_retrieval_against_a_separate_index_matches_brute_force():
    """Test queries against the training split (the triplet evaluation's second protocol):
    nothing left out, R = the query class's count in the index."""
    rng = np.random.default_rng(4)
    index_labels, labels = rng.integers(0, 3, 50), rng.integers(0, 3, 20)
    index = rng.normal(size=(50, 4)) + index_labels[:, None]
    queries = rng.normal(size=(20, 4)) + labels[:, None]
    got = retrieval_metrics(queries, labels, index, index_labels, ks=(1,), chunk=8)
    p1, maps = [], []
    for q, c in zip(queries, labels):
        rel = index_labels[np.argsort(np.sum((index - q) ** 2, -1), kind="stable")] == c
        r = int(np.sum(index_labels == c))
        p1.append(rel[0])
        maps.append(sum(rel[:j + 1].mean() for j in range(r) if rel[j]) / r)
    assert got["retrieval_queries"] == 20
    assert got["precision_at_1"] == pytest.approx(np.mean(p1))
    assert got["map_at_r"] == pytest.approx(np.mean(maps))


def test_retrieval_hand_cases():
    emb = np.array([[0.0], [0.1], [5.0], [5.1]])
    perfect = retrieval_metrics(emb, np.array([0, 0, 1, 1]), ks=(1,))
    assert perfect["precision_at_1"] == perfect["map_at_r"] == perfect["r_precision"] == 1.0
    worst = retrieval_metrics(emb, np.array([0, 1, 0, 1]), ks=(1,))
    assert worst["precision_at_1"] == 0.0 and worst["map_at_r"] == 0.0
    with pytest.raises(UserError, match="metric"):
        retrieval_metrics(emb, np.zeros(4), metric="manhattan")


def test_the_neighbours_grid_of_a_split_smaller_than_its_columns_is_drawn(tmp_path):
    # A folder with 3 test images used to fail in top_k (8 neighbours asked of 2).
    from keras_ssl.evaluation.retrieval import retrieval_grid

    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    path = retrieval_grid(images, np.eye(3, dtype=np.float32), None, str(tmp_path / "grid.png"))
    assert os.path.getsize(path) > 0
