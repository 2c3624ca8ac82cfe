"""The weighted kNN of the evaluator (Wu et al. 2018): cosine similarity, exactly k neighbours,
exp(similarity / T) votes; hand cases that show each rule, and a NumPy brute force."""

import numpy as np
import pytest

from keras_ssl.evaluation import KNN_TEMPERATURE, evaluate_features, knn_accuracy, knn_predict

SEED = 1234


def np_knn(train_x, train_y, test_x, k, num_classes, temperature=KNN_TEMPERATURE):
    """Brute force, one query at a time, in float64: cosine similarity to every train row,
    the k largest, each votes exp(sim / T) for its class; the class with the most weight."""
    train = train_x.astype(np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    preds = []
    for q in test_x.astype(np.float64):
        sims = train @ (q / np.linalg.norm(q))
        top = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for i in top:
            votes[train_y[i]] += np.exp(sims[i] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def test_similarity_is_cosine_not_the_dot_product():
    # the query points along x; a long vector 45 degrees off has the larger dot product (100 vs 1),
    # a short one nearly along x the larger cosine (0.995 vs 0.707): cosine picks the short one
    train_x = np.array([[1.0, 0.1], [100.0, 100.0]], np.float32)
    train_y = np.array([0, 1])
    test_x = np.array([[1.0, 0.0], [3.0, 0.0], [0.1, 0.0]], np.float32)  # the query's own norm is irrelevant
    assert knn_predict(train_x, train_y, test_x, k=1).tolist() == [0, 0, 0]


def test_exactly_k_neighbours_vote():
    # sorted by similarity to the query [1, 0]: a (class 0, sim 1), b and c (class 1, sim 0.99875
    # each), d (class 0, sim -1). k = 1 or 2: a's weight wins; k = 3: b + c outweigh a (about 1.96x);
    # k = 4: d's vote, exp(-1 / 0.07), changes nothing.
    train_x = np.array([[1.0, 0.0], [1.0, 0.05], [1.0, -0.05], [-1.0, 0.0]], np.float32)
    train_y = np.array([0, 1, 1, 0])
    query = np.array([[1.0, 0.0]], np.float32)
    got = {k: int(knn_predict(train_x, train_y, query, k=k)[0]) for k in (1, 2, 3, 4, 20)}
    assert got == {1: 0, 2: 0, 3: 1, 4: 1, 20: 1}, got  # k > N: all N vote


def test_votes_are_weighted_by_exp_similarity_over_temperature():
    # one neighbour at similarity 1 against two at 0.9: exp(1/0.07) > 2 exp(0.9/0.07) (ratio about
    # 4.2), so the single close one wins where a plain majority would not; at T = 1 the pair wins
    train_x = np.array([[1.0, 0.0], [0.9, np.sqrt(1 - 0.81)], [0.9, -np.sqrt(1 - 0.81)]], np.float32)
    train_y = np.array([0, 1, 1])
    query = np.array([[1.0, 0.0]], np.float32)
    assert knn_predict(train_x, train_y, query, k=3).tolist() == [0]
    assert knn_predict(train_x, train_y, query, k=3, temperature=1.0).tolist() == [1]


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_brute_force_with_mixed_norms(k):
    rng = np.random.default_rng(SEED + k)
    centres = rng.normal(size=(4, 6))
    train_y = rng.integers(0, 4, 120)
    test_y = rng.integers(0, 4, 50)
    # rows of very different lengths: cosine and dot-product neighbours differ
    train_x = (centres[train_y] + rng.normal(size=(120, 6))) * rng.lognormal(0, 1.5, (120, 1))
    test_x = (centres[test_y] + rng.normal(size=(50, 6))) * rng.lognormal(0, 1.5, (50, 1))
    train_x, test_x = train_x.astype(np.float32), test_x.astype(np.float32)
    expected = np_knn(train_x, train_y, test_x, k, 4)
    got = knn_predict(train_x, train_y, test_x, k=k, num_classes=4, chunk=16)  # several chunks
    np.testing.assert_array_equal(got, expected, err_msg=f"seed {SEED + k}")
    assert knn_accuracy(train_x, train_y, test_x, test_y, k, 4) == pytest.approx(np.mean(expected == test_y))
    # the case tells cosine from dot product: their k nearest differ for most queries
    unit = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    differ = [set(np.argsort(-(unit @ q))[:k]) != set(np.argsort(-(train_x @ q))[:k]) for q in test_x]
    assert np.mean(differ) > 0.5, f"seed {SEED + k}"


def test_evaluate_features_reports_the_knn_of_each_k():
    rng = np.random.default_rng(SEED)
    train_y, test_y = rng.integers(0, 3, 90), rng.integers(0, 3, 30)
    train_x = (rng.normal(size=(90, 5)) + 2 * np.eye(5)[train_y]).astype(np.float32)
    test_x = (rng.normal(size=(30, 5)) + 2 * np.eye(5)[test_y]).astype(np.float32)
    results = evaluate_features(train_x, train_y, test_x, test_y, 3, knn_k=(1, 7), probe_max_iter=200)
    for k in (1, 7):
        expected = np.mean(np_knn(train_x, train_y, test_x, k, 3) == test_y)
        assert results[f"knn_accuracy_k{k}"] == pytest.approx(expected), (k, f"seed {SEED}")
    assert results["knn_accuracy"] == results["knn_accuracy_k1"]


def test_the_spatial_reading_is_the_mean_of_each_region_of_the_last_map():
    """`block3:grid2` of small_cnn: its 7x7 map averaged over rows/columns 0-3 and 3-6
    (adaptive pooling: the middle row and column in both), region by region; and
    `evaluate_encoder` reports it beside the served (globally pooled) features."""
    import keras

    from keras_ssl.data.sources import ImageDataset, Split
    from keras_ssl.encoders import build_encoder
    from keras_ssl.errors import UserError
    from keras_ssl.evaluation import evaluate_encoder
    from keras_ssl.evaluation.classification import feature_model, spatial_layer

    encoder = build_encoder("small_cnn", (28, 28, 1))
    images = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    maps = keras.Model(encoder.input, encoder.get_layer("block3").output)(images).numpy()
    want = np.concatenate([maps[:, r0:r1, c0:c1].mean(axis=(1, 2)) for r0, r1 in ((0, 4), (3, 7))
                           for c0, c1 in ((0, 4), (3, 7))], axis=1)
    assert spatial_layer(encoder) == "block3"
    np.testing.assert_allclose(feature_model(encoder, "block3:grid2")(images).numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="not a feature map"):
        feature_model(encoder, "features:grid2")
    with pytest.raises(UserError, match="gridN"):
        feature_model(encoder, "block3:grid")

    rng = np.random.default_rng(1)
    split = lambda n: Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), np.arange(n) % 3)
    dataset = ImageDataset("noise", split(60), split(30), tuple(str(i) for i in range(3)))
    results = evaluate_encoder(encoder, dataset, plot=None, knn_k=(5,), layers=["block2:grid2"])
    assert results["feature_dim"] == 128 and results["grid_feature_dim"] == 4 * 128
    assert results["grid_reading"] == "block3:grid2" and 0 <= results["grid_knn_accuracy"] <= 1
    assert results["per_layer"]["block2:grid2"]["feature_dim"] == 4 * 64


def test_extracting_features_many_times_does_not_warn_of_retracing(caplog):
    """Each reading and split gets its own traced function (full batches, then the last partial
    one); TF's "frequent retracing" warning, which counts traces per function's code, must not
    add them up (it did when each call traced a new lambda: 6 readings printed it)."""
    import logging

    from keras_ssl.data.sources import Split
    from keras_ssl.encoders import small_cnn
    from keras_ssl.evaluation import extract_features

    encoder = small_cnn((8, 8, 1), width_multiplier=0.25)
    split = Split(np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8), np.zeros(10, np.int64))
    with caplog.at_level(logging.WARNING):
        for layer in (None, "block1", "block2", "block3", "block2:grid2", "block3:grid2", None, "block1"):
            assert extract_features(encoder, split, batch_size=4, layer=layer).shape[0] == 10
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_the_table_prints_each_readings_knn_once_under_its_k():
    from keras_ssl.evaluation import format_table

    reading = {"linear_probe_accuracy": 0.9, "knn_accuracy": 0.87, "knn_accuracy_k20": 0.87,
               "knn_accuracy_k200": 0.84, "feature_dim": 576}
    results = {"linear_probe_accuracy": 0.86, "knn_accuracy": 0.83, "knn_accuracy_k20": 0.83,
               "knn_accuracy_k200": 0.8, "per_layer": {"block2:grid3": reading}}
    labels = [line.split()[0] for line in format_table(results).splitlines()[2:]]
    assert labels == ["knn_accuracy_k20", "knn_accuracy_k200", "linear_probe_accuracy",
                      "block2:grid3/knn_accuracy_k20", "block2:grid3/knn_accuracy_k200",
                      "block2:grid3/linear_probe_accuracy"]


def test_a_chosen_grid_reading_replaces_the_last_maps_and_none_drops_it():
    """`grid_reading="block2:grid3"` (the demo's) reports that reading as `grid_*`, with the figures
    the same reading gives as an extra probe point; None reports no grid; a reading without its
    grid is refused in one line; the printed table names the reading."""
    from keras_ssl.data.sources import ImageDataset, Split
    from keras_ssl.encoders import build_encoder
    from keras_ssl.errors import UserError
    from keras_ssl.evaluation import evaluate_encoder, format_table

    encoder = build_encoder("small_cnn", (28, 28, 1))
    rng = np.random.default_rng(2)
    split = lambda n: Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), np.arange(n) % 3)
    dataset = ImageDataset("noise", split(60), split(30), tuple(str(i) for i in range(3)))
    chosen = evaluate_encoder(encoder, dataset, plot=None, knn_k=(5,), grid_reading="block2:grid3")
    extra = evaluate_encoder(encoder, dataset, plot=None, knn_k=(5,), grid_reading=None, layers=["block2:grid3"])
    assert chosen["grid_reading"] == "block2:grid3" and chosen["grid_feature_dim"] == 9 * 64
    assert "per_layer" not in chosen and not any(k.startswith("grid_") for k in extra)
    assert chosen["grid_linear_probe_accuracy"] == extra["per_layer"]["block2:grid3"]["linear_probe_accuracy"]
    assert chosen["grid_knn_accuracy"] == extra["per_layer"]["block2:grid3"]["knn_accuracy"]
    assert [line.split() for line in format_table(chosen).splitlines() if "grid_reading" in line] == [
        ["grid_reading", "block2:grid3"]]
    with pytest.raises(UserError, match="e.g. block2:grid3"):
        evaluate_encoder(encoder, dataset, plot=None, grid_reading="block2")
    assert "grid_reading" not in evaluate_encoder(encoder, dataset, plot=None, knn_k=(5,), grid_reading="none")
    import unittest.mock

    with unittest.mock.patch("keras_ssl.evaluation.classification.linear_probe") as probe, \
            pytest.raises(UserError, match="no layer 'block9'"):
        evaluate_encoder(encoder, dataset, plot=None, grid_reading="block9:grid3")
    assert not probe.called  # refused before the served vector's probe ran


def test_the_declared_rows_keep_the_tables_columns_and_show_the_threshold_once():
    """A Siamese run's table: the grid reading's name (wider than a percentage) and the
    verification rows laid out in one column; `threshold` shown once, as "threshold (units)"."""
    from keras_ssl.evaluation import format_table
    from keras_ssl.evaluation.method_evaluations import evaluation
    from keras_ssl.evaluation.run_report import _with_declared_rows

    results = {"linear_probe_accuracy": 0.9, "knn_accuracy": 0.88, "knn_accuracy_k20": 0.88,
               "grid_linear_probe_accuracy": 0.91, "grid_knn_accuracy": 0.9, "grid_reading": "block3:grid2",
               "roc_auc": 0.985, "eer": 0.064, "threshold": 0.575, "threshold_units": "distance",
               "verification_accuracy": 0.938}
    lines = _with_declared_rows(format_table(results), [evaluation("verification")], results).splitlines()
    assert len({len(line) for line in lines if not line.startswith("-")}) == 1 == len({len(lines[1]), len(lines[0])})
    assert [line.split()[0] for line in lines].count("threshold") == 1


def test_the_request_normalises_its_grid_reading_and_only_images_take_a_chosen_one():
    from keras_ssl import modalities
    from keras_ssl.errors import UserError
    from keras_ssl.evaluation.request import EvaluationRequest

    assert EvaluationRequest(grid_reading="none").grid_reading is None
    assert EvaluationRequest().grid_reading == "auto"
    with pytest.raises(UserError, match="e.g. block2:grid3"):
        EvaluationRequest(grid_reading="block2")
    chosen = EvaluationRequest(grid_reading="block2:grid3")
    modalities.get("image").check_request(chosen)
    for name in ("audio", "text"):
        for fine in (EvaluationRequest(), EvaluationRequest(grid_reading="none")):
            modalities.get(name).check_request(fine)
        with pytest.raises(UserError, match=f"this is a {name} run"):
            modalities.get(name).check_request(chosen)
