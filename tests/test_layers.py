"""FusedBatchNormalization computes what Keras's BatchNormalization computes, and converts back to it."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.encoders import build_encoder
from keras_ssl.layers import FusedBatchNormalization, with_keras_batch_norm


def _pair(shape, **kwargs):
    keras_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    fused_bn = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    for layer in (keras_bn, fused_bn):
        layer.build(shape)
    rng = np.random.default_rng(0)
    for name in ("gamma", "beta"):
        if getattr(keras_bn, name) is not None:
            value = rng.normal(1.0, 0.3, shape[-1]).astype("float32")
            getattr(keras_bn, name).assign(value)
            getattr(fused_bn, name).assign(value)
    return keras_bn, fused_bn


def _train_step(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        objective = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(objective, [x] + layer.trainable_variables)
    return y, grads


@pytest.mark.parametrize("shape,center,scale", [((6, 5, 4, 3), True, True), ((16, 8), True, True),
                                               ((16, 8), False, True), ((6, 5, 4, 3), True, False)])
def test_training_step_matches_keras(shape, center, scale):
    keras_bn, fused_bn = _pair(shape, center=center, scale=scale)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(2.0, 3.0, shape).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))
    y_keras, g_keras = _train_step(keras_bn, x, upstream)
    y_fused, g_fused = _train_step(fused_bn, x, upstream)
    np.testing.assert_allclose(y_fused, y_keras, rtol=1e-5, atol=1e-5)
    assert len(g_fused) == len(g_keras)
    for a, b in zip(g_fused, g_keras):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # moving statistics use the biased batch variance (1/n), as Keras does
    np.testing.assert_allclose(fused_bn.moving_mean, keras_bn.moving_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fused_bn.moving_variance, keras_bn.moving_variance, rtol=1e-5, atol=1e-6)
    x_np = x.numpy().reshape(-1, shape[-1])
    expected_var = 0.9 + 0.1 * x_np.var(axis=0)  # NumPy's var is the 1/n one
    np.testing.assert_allclose(fused_bn.moving_variance, expected_var, rtol=1e-5)
    # inference is Keras's own path
    np.testing.assert_allclose(fused_bn(x, training=False), keras_bn(x, training=False), rtol=1e-6, atol=1e-6)


def test_mixed_bfloat16_output_dtype_and_values():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras_bn, fused_bn = _pair((4, 3, 3, 5))
        x = tf.cast(tf.random.stateless_normal((4, 3, 3, 5), (0, 1)), tf.bfloat16)
        y_fused = fused_bn(x, training=True)
        y_keras = keras_bn(x, training=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert y_fused.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y_fused, tf.float32), tf.cast(y_keras, tf.float32), atol=2e-2)


def test_synchronized_and_masked_inputs_use_keras_code():
    layer = FusedBatchNormalization(synchronized=True)
    x = tf.random.stateless_normal((4, 2, 2, 3), (0, 2))
    assert not layer._fusable(x, True, None)
    assert not FusedBatchNormalization()._fusable(tf.zeros((2, 3, 4)), True, None)
    assert not FusedBatchNormalization()._fusable(x, True, tf.ones((4, 2, 2)))
    assert FusedBatchNormalization()._fusable(x, True, None)
    assert not FusedBatchNormalization()._fusable(x, False, None)
    assert not FusedBatchNormalization()._fusable(tf.cast(x, tf.float64), True, None)  # Keras keeps float64


def test_traced_step_matches_eager_keras():
    keras_bn, fused_bn = _pair((4, 3, 3, 2))
    x = tf.random.stateless_normal((4, 3, 3, 2), (2, 3))
    traced = tf.function(lambda t: fused_bn(t, training=True))(x)
    np.testing.assert_allclose(traced, keras_bn(x, training=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused_bn.moving_variance, keras_bn.moving_variance, rtol=1e-5, atol=1e-6)


def test_encoder_converts_to_plain_keras_with_same_outputs(tmp_path):
    encoder = build_encoder("small_cnn", (12, 12, 1), width_multiplier=0.25, sync_bn=False)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in encoder.layers)
    x = np.random.default_rng(0).random((3, 12, 12, 1)).astype("float32")
    encoder(x, training=True)  # moves the statistics away from their initial values
    plain = with_keras_batch_norm(encoder)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in plain.layers)
    assert any(type(layer) is keras.layers.BatchNormalization for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x, verbose=0), encoder.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    assert with_keras_batch_norm(plain) is plain

    path = str(tmp_path / "encoder.keras")
    plain.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", encoder.predict(x, verbose=0))
    # loads in a process that cannot import keras_ssl
    script = (
        "import sys, numpy as np\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'keras_ssl': raise ImportError('keras_ssl is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import keras\n"
        f"m = keras.models.load_model({path!r})\n"
        f"d = tmp = {str(tmp_path)!r}\n"
        "np.testing.assert_allclose(m.predict(np.load(d + '/x.npy'), verbose=0), np.load(d + '/y.npy'), atol=1e-5)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
