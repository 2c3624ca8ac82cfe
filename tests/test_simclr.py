"""The SimCLR model: fit on images and on view pairs, metrics, .keras round trip, 2 replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.data import load_source, simclr_augment, simclr_views
from keras_ssl.encoders import build_encoder, feature_layer_names, small_cnn
from keras_ssl.errors import UserError
from keras_ssl.heads import projection_head
from keras_ssl.models import SimCLR
from keras_ssl.optimizers import LARS


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def _model(num_classes=None, sync_bn=False, augment="fashion_mnist"):
    encoder = small_cnn((8, 8, 1), width_multiplier=0.5, sync_bn=sync_bn)
    head = projection_head(int(encoder.output_shape[-1]), output_dim=16, sync_bn=sync_bn)
    return SimCLR(encoder, head, temperature=0.5, num_classes=num_classes, augment=augment)


def test_fit_on_images_makes_views_inside(digits):
    keras.utils.set_random_seed(0)
    model = _model(num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    hist = model.fit(digits.train.images[:512], digits.train.labels[:512], batch_size=64, epochs=6, verbose=0)
    logs = hist.history
    assert set(logs) == {"loss", "contrastive_accuracy", "output_std", "probe_loss", "probe_accuracy"}
    assert all(np.isfinite(v) for vals in logs.values() for v in vals)
    assert logs["loss"][-1] < logs["loss"][0] - 0.1, logs["loss"]
    assert logs["probe_accuracy"][-1] > 0.15  # chance: 0.1
    # healthy: std of normalised 16-d outputs near 1/sqrt(16) = 0.25, far from collapse (0)
    assert 0.1 < logs["output_std"][-1] <= 0.26
    features = model.predict(digits.test.images[:10], verbose=0)
    assert features.shape == (10, int(model.encoder.output_shape[-1]))


def test_fit_on_view_pairs_without_labels(digits):
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = simclr_views(digits.train, 64, "fashion_mnist", with_labels=False).take(4)
    hist = model.fit(data, epochs=1, verbose=0)
    assert "probe_accuracy" not in hist.history and np.isfinite(hist.history["loss"][0])
    result = model.evaluate(simclr_views(digits.test, 64, "fashion_mnist", with_labels=False).take(2),
                            verbose=0, return_dict=True)
    assert result["loss"] > 0


def test_keras_round_trip_keeps_config_weights_and_optimizer(digits, tmp_path):
    model = _model(num_classes=10)
    model.compile(optimizer=LARS(0.5))
    model.fit(digits.train.images[:128], digits.train.labels[:128], batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path / "simclr.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SimCLR)
    assert (loaded.temperature, loaded.num_classes, loaded.augment_config) == (0.5, 10, model.augment_config)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    x = digits.test.images[:8]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    loaded.fit(digits.train.images[:128], digits.train.labels[:128], batch_size=64, epochs=1, verbose=0)


def test_encoders_shapes_and_probe_points():
    enc = build_encoder("resnet18", (32, 32, 3), width_multiplier=0.25, cifar_stem=True)
    assert enc.output_shape == (None, 128)
    assert feature_layer_names(enc) == ["block1", "block2", "block3", "block4", "features"]
    assert enc.get_layer("block1").output.shape[1:3] == (32, 32)  # CIFAR stem: no downsampling
    imagenet = build_encoder("resnet18", (64, 64, 3), width_multiplier=0.25, cifar_stem=False)
    assert imagenet.get_layer("block1").output.shape[1:3] == (16, 16)
    r50 = build_encoder("resnet50", (32, 32, 3), width_multiplier=0.125)
    assert r50.output_shape == (None, 256)
    with pytest.raises(UserError, match="unknown encoder"):
        build_encoder("vgg", (32, 32, 3))
    with pytest.raises(UserError, match="too small"):
        build_encoder("resnet18", (16, 16, 3), cifar_stem=False)


def test_sync_bn_follows_strategy(two_cpu_strategy):
    plain = small_cnn((8, 8, 1))
    assert not any(getattr(layer, "synchronized", False) for layer in plain.layers)
    with two_cpu_strategy.scope():
        synced = small_cnn((8, 8, 1))
    bns = [layer for layer in synced.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.synchronized for layer in bns)


def _one_step(strategy, images, sync_bn):
    """Loss and the encoder's updated first kernel after one SGD step (lr 1)."""
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = _model(sync_bn=sync_bn)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
        model.build()
    before = model.encoder.trainable_variables[0].numpy()
    view_a = simclr_augment(images, tf.constant([0, 1]), "fashion_mnist")
    view_b = simclr_augment(images, tf.constant([0, 2]), "fashion_mnist")
    data = tf.data.Dataset.from_tensor_slices((view_a, view_b)).batch(len(images))
    hist = model.fit(data, epochs=1, verbose=0, shuffle=False)
    after = model.encoder.trainable_variables[0].numpy()
    return hist.history["loss"][0], before - after  # the gradient (lr 1, no momentum)


def test_two_replicas_match_one_device_with_sync_bn(two_cpu_strategy, digits):
    images = digits.train.images[:16]
    loss1, grad1 = _one_step(tf.distribute.get_strategy(), images, sync_bn=True)
    loss2, grad2 = _one_step(two_cpu_strategy, images, sync_bn=True)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    np.testing.assert_allclose(grad2, grad1, rtol=1e-3, atol=1e-5)


def _encoder_gradients(model, data):
    with tf.GradientTape() as tape:
        loss = model.method_loss(data, training=True)
    return [g.numpy() for g in tape.gradient(loss, model.encoder.trainable_variables)], loss


def test_probe_gradients_reach_the_probe_only(digits):
    """The online probe reads stop_gradient(h): its loss changes the probe's weights, never the
    encoder's. With labels the encoder's gradient is the NT-Xent one alone, as without labels."""
    keras.utils.set_random_seed(11)
    model = _model(num_classes=10)
    images, labels = digits.train.images[:16], digits.train.labels[:16]
    view_a = simclr_augment(images, tf.constant([0, 1]), "fashion_mnist")
    view_b = simclr_augment(images, tf.constant([0, 2]), "fashion_mnist")
    without, _ = _encoder_gradients(model, (view_a, view_b))
    with_labels, _ = _encoder_gradients(model, ((view_a, view_b), tf.constant(labels)))
    for g0, g1 in zip(without, with_labels):
        np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-7)
    # the probe's own loss, alone: no gradient to the encoder, a non-zero one to the probe
    with tf.GradientTape() as tape:
        h = model.encoder(view_a, training=True)
        loss = model.probe_loss(h, tf.constant(labels), training=True)
    grads = tape.gradient(loss, model.encoder.trainable_variables + model.probe.trainable_variables)
    n_enc = len(model.encoder.trainable_variables)
    assert all(g is None or not np.any(g.numpy()) for g in grads[:n_enc])
    assert all(g is not None and np.any(g.numpy()) for g in grads[n_enc:])


def test_probe_trains_on_the_first_augmented_view(digits, monkeypatch):
    """SimCLR's probe learns from the features of the first *augmented* view (as SimCLR's
    reference code does: the probe sees the training views), not of the unaugmented images."""
    keras.utils.set_random_seed(12)
    model = _model(num_classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.1))  # the step counter seeds the views
    images, labels = digits.train.images[:8], tf.constant(digits.train.labels[:8])
    seen = []
    monkeypatch.setattr(model, "probe_loss", lambda features, y, training: seen.append(features) or 0.0)

    view_a = simclr_augment(images, tf.constant([0, 1]), "fashion_mnist")
    view_b = simclr_augment(images, tf.constant([0, 2]), "fashion_mnist")
    model.method_loss(((view_a, view_b), labels), training=False)
    np.testing.assert_allclose(seen[-1].numpy(), model.encoder(view_a, training=False).numpy(), rtol=1e-5,
                               atol=1e-6)

    model.method_loss((images, labels), training=False)  # views made inside the step
    made_a, _ = model._views(images)
    unaugmented = model.encoder(tf.cast(images, tf.float32) / 255.0, training=False).numpy()
    np.testing.assert_allclose(seen[-1].numpy(), model.encoder(made_a, training=False).numpy(), rtol=1e-5,
                               atol=1e-6)
    assert np.abs(seen[-1].numpy() - unaugmented).max() > 1e-3
