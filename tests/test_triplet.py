"""Triplet models: online mining and explicit triplets learn; global mining on 2 replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.data import load_source
from keras_ssl.data.pairs import triplet_batches
from keras_ssl.data.sampling import pk_batches
from keras_ssl.encoders import small_cnn
from keras_ssl.errors import UserError
from keras_ssl.evaluation import retrieval_metrics
from keras_ssl.models import OnlineTriplet, TripletNetwork


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def _encoder(sync_bn=False):
    return small_cnn((8, 8, 1), width_multiplier=0.5, sync_bn=sync_bn)


@pytest.mark.parametrize("mining", ["semi_hard", "hard", "all", "multi_similarity"])
def test_online_triplet_learns_and_retrieves(digits, mining):
    keras.utils.set_random_seed(0)
    if mining == "multi_similarity":  # the other objective, with its own mining
        model = OnlineTriplet(_encoder(), embedding_dim=32, objective="multi_similarity")
        assert OnlineTriplet.from_config(model.get_config()).objective == "multi_similarity"
    else:
        model = OnlineTriplet(_encoder(), embedding_dim=32, mining=mining)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = retrieval_metrics(model.predict(digits.test.images, verbose=0), digits.test.labels)
    hist = model.fit(pk_batches(digits.train, 8, 8, epochs=3), steps_per_epoch=20, epochs=3, verbose=0).history
    assert set(hist) == {"loss", "active_fraction", "pos_distance", "neg_distance", "embedding_std"}
    assert all(np.isfinite(v) for vals in hist.values() for v in vals)
    assert hist["pos_distance"][-1] < hist["neg_distance"][-1]
    after = retrieval_metrics(model.predict(digits.test.images, verbose=0), digits.test.labels)
    assert after["map_at_r"] > before["map_at_r"] + 0.05 and after["precision_at_1"] > 0.8


def _triplet_labels(split, batch):
    """The labels of a `triplet_batches` batch, found by looking each image up in `split`."""
    by_pixels = {}
    for image, label in zip(split.images, split.labels):
        by_pixels.setdefault(image.tobytes(), set()).add(int(label))
    found = []
    for images in batch:
        pixels = np.round(images.numpy() * 255).astype(np.uint8)
        found.append([by_pixels[p.tobytes()] for p in pixels])
    return found


def _ordered_fraction(model, batch):
    """Fraction of triplets whose positive is nearer the anchor than the negative."""
    a, p, n = (model.predict(x, verbose=0) for x in batch)
    return float(np.mean(np.sum((a - p) ** 2, 1) < np.sum((a - n) ** 2, 1)))


def test_explicit_triplets_learn_and_round_trip(digits, tmp_path):
    keras.utils.set_random_seed(0)
    model = TripletNetwork(_encoder(), embedding_dim=16)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    # held-out triplets (of the test split): each positive is of its anchor's class, each negative not
    held_out = next(iter(triplet_batches(digits.test, 256, seed=1)))
    anchors, positives, negatives = _triplet_labels(digits.test, held_out)
    assert all(a & p and not a & n for a, p, n in zip(anchors, positives, negatives))
    before = _ordered_fraction(model, held_out)
    hist = model.fit(triplet_batches(digits.train, 32, seed=0), steps_per_epoch=15, epochs=3, verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0]
    after = _ordered_fraction(model, held_out)
    # learnt: on unseen triplets the positive is nearer far more often than before training (seed 0)
    assert after > 0.85 and after > before + 0.1, (before, after)
    model.save(tmp_path / "t.keras")
    loaded = keras.models.load_model(tmp_path / "t.keras")
    assert isinstance(loaded, TripletNetwork) and loaded.margin == model.margin
    np.testing.assert_allclose(loaded.predict(digits.test.images[:4], verbose=0),
                               model.predict(digits.test.images[:4], verbose=0), atol=1e-6)
    assert _ordered_fraction(loaded, held_out) == after


def test_triplet_builder_labels(digits):
    from keras_ssl.data.pairs import _class_tables, _draw

    table, counts, class_ids, position = (tf.constant(t) for t in _class_tables(digits.train.labels))
    anchor, pos, neg, _ = (t.numpy() for t in _draw(tf.range(500, dtype=tf.int64), table, counts, class_ids,
                                                    position, len(digits.train), 0, False))
    labels = digits.train.labels
    assert np.all(labels[anchor] == labels[pos]) and np.all(labels[anchor] != labels[neg])
    assert not np.any(anchor == pos)


def _one_step(strategy, x, y):
    keras.utils.set_random_seed(5)
    with strategy.scope():
        model = OnlineTriplet(_encoder(sync_bn=True), embedding_dim=8, mining="hard")
        model.compile(optimizer=keras.optimizers.SGD(1.0))
    before = [v.numpy() for v in model.trainable_variables]
    loss = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0, shuffle=False).history["loss"][0]
    return loss, [b - v.numpy() for b, v in zip(before, model.trainable_variables)]


def test_mining_sees_the_global_batch_on_two_replicas(two_cpu_strategy, digits):
    # Replica 0 gets classes {0, 1}, replica 1 gets {2, 3}: local mining would find
    # other negatives than global mining; equality with one device proves global.
    x, y = next(iter(pk_batches(digits.train, 4, 4, seed=2)))
    order = np.argsort(y.numpy(), kind="stable")
    x, y = tf.gather(x, order), tf.gather(y, order)
    loss1, grads1 = _one_step(tf.distribute.get_strategy(), x, y)
    loss2, grads2 = _one_step(two_cpu_strategy, x, y)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_allclose(g2, g1, rtol=1e-3, atol=1e-5)


def test_bad_input(digits):
    with pytest.raises(UserError, match="mining must be one of"):
        OnlineTriplet(_encoder(), mining="semihard")
    model = TripletNetwork(_encoder(), embedding_dim=4)
    model.compile(optimizer="adam")
    x = digits.train.images[:4]
    with pytest.raises(UserError, match="same shape"):
        model.fit(tf.data.Dataset.from_tensors((x, x, x[:, :7])), verbose=0)
