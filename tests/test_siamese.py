"""The Siamese model: both heads learn, metrics, .keras round trip, 2 replicas, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.data import load_source
from keras_ssl.data.pairs import pair_batches
from keras_ssl.encoders import small_cnn
from keras_ssl.errors import UserError
from keras_ssl.models import Siamese


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def _model(head="distance", sync_bn=False, **kwargs):
    return Siamese(small_cnn((8, 8, 1), width_multiplier=0.5, sync_bn=sync_bn), embedding_dim=16, head=head,
                   **kwargs)


@pytest.mark.parametrize("head", ["distance", "l1_sigmoid"])
def test_fit_on_pairs_learns(digits, head):
    keras.utils.set_random_seed(0)
    model = _model(head, normalize=(head == "distance"))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    hist = model.fit(pair_batches(digits.train, 64, seed=0), steps_per_epoch=10, epochs=4, verbose=0).history
    assert set(hist) == {"loss", "pos_distance", "neg_distance", "pair_accuracy"}
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["pair_accuracy"][-1] > 0.7
    if head == "distance":
        assert hist["pos_distance"][-1] < hist["neg_distance"][-1]
    else:
        assert hist["pos_distance"][-1] > hist["neg_distance"][-1]  # probabilities
    emb = model.predict(digits.test.images[:5], verbose=0)
    assert emb.shape == (5, 16)


def test_keras_round_trip(digits, tmp_path):
    model = _model("l1_sigmoid", threshold=0.6)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(pair_batches(digits.train, 32), steps_per_epoch=2, epochs=1, verbose=0)
    model.save(tmp_path / "siamese.keras")
    loaded = keras.models.load_model(tmp_path / "siamese.keras")
    assert isinstance(loaded, Siamese) and (loaded.head, loaded.threshold, loaded.embedding_dim) == ("l1_sigmoid", 0.6, 16)
    x = digits.test.images[:4]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert int(loaded.optimizer.iterations) == 2


def _one_step(strategy, batch):
    keras.utils.set_random_seed(11)
    with strategy.scope():
        model = _model(sync_bn=True)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
    before = [v.numpy() for v in model.trainable_variables]
    data = tf.data.Dataset.from_tensors(batch)
    loss = model.fit(data, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    return loss, [b - v.numpy() for b, v in zip(before, model.trainable_variables)]


def test_two_replicas_match_one_device(two_cpu_strategy, digits):
    batch = next(iter(pair_batches(digits.train, 16, seed=4)))
    loss1, grads1 = _one_step(tf.distribute.get_strategy(), batch)
    loss2, grads2 = _one_step(two_cpu_strategy, batch)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_allclose(g2, g1, rtol=1e-3, atol=1e-5)


def test_bad_input_is_clear(digits):
    model = _model()
    model.compile(optimizer="adam")
    x = digits.train.images[:4]
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be 0 .* or 1"):
        model.fit(tf.data.Dataset.from_tensors(((x, x), np.array([0.0, 1.0, 2.0, 1.0]))), verbose=0)
    with pytest.raises(UserError, match="same shape"):
        model.fit(tf.data.Dataset.from_tensors(((x, x[:, :, :7]), np.ones(4, np.float32))), verbose=0)
    with pytest.raises(UserError, match="threshold must be a number"):
        _model(threshold="high")
    with pytest.raises(UserError, match="head must be one of"):
        _model(head="cosine")


def test_one_shot_is_also_read_from_the_encoder_features(digits):
    """evaluate_siamese scores the same trials on the encoder's features (before the head):
    10-way and, with classes held out of training, N-way over those; printed beside the
    embedding's."""
    from keras_ssl.evaluation import evaluate_siamese, extract_features, one_shot_accuracy
    from keras_ssl.evaluation.report import format_table

    keras.utils.set_random_seed(0)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(pair_batches(digits.train, 64, seed=0), steps_per_epoch=5, epochs=1, verbose=0)
    results = evaluate_siamese(model, digits.test, digits.train.take(300), train_classes=list(range(7)), pairs=500,
                               trials=300)
    assert set(results["encoder_one_shot_accuracy"]) == set(results["one_shot_accuracy"]) == {"10", "3_heldout"}
    features = extract_features(model.encoder, digits.test).astype(np.float64)
    distance = lambda q, s: -np.sqrt(np.sum((s - q[:, None, :]) ** 2, axis=-1))
    want = one_shot_accuracy(features, digits.test.labels, 3, 300, classes=[7, 8, 9], seed=1234, score_fn=distance)
    assert results["encoder_one_shot_accuracy"]["3_heldout"] == want
    assert results["encoder_one_shot_accuracy"] != results["one_shot_accuracy"]  # another reading
    grid = extract_features(model.encoder, digits.test, layer="block3:grid2").astype(np.float64)
    assert grid.shape[1] == 4 * features.shape[1] and results["grid_one_shot_reading"] == "block3:grid2"
    assert results["grid_one_shot_accuracy"]["3_heldout"] == one_shot_accuracy(
        grid, digits.test.labels, 3, 300, classes=[7, 8, 9], seed=1234, score_fn=distance)
    table = format_table(results)
    assert "encoder_one_shot_accuracy[3-way, held-out]" in table and "one_shot_accuracy[10-way]" in table
    assert "grid_one_shot_accuracy[3-way, held-out]" in table
