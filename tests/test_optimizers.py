"""LARS: exclusions by shape/owner on a real ResNet, steps against NumPy; schedule and scaling."""

import keras
import numpy as np
import pytest

from keras_ssl.encoders import resnet
from keras_ssl.errors import UserError
from keras_ssl.heads import projection_head
from keras_ssl.optimizers import LARS, WarmupCosine, build_optimizer, scale_learning_rate


def test_exclusions_hold_for_every_resnet_variable():
    encoder = resnet(18, (32, 32, 3), cifar_stem=True, width_multiplier=0.25)
    head = projection_head(int(encoder.output_shape[-1]))
    opt = LARS(0.1)
    checked = 0
    for model in (encoder, head):
        for layer in model.layers:
            for var in layer.trainable_variables:
                is_norm = isinstance(layer, keras.layers.BatchNormalization)
                is_bias = var is getattr(layer, "bias", None)
                should_exclude = is_norm or is_bias
                assert opt.is_excluded(var) == should_exclude, (layer.name, var.path, var.shape)
                checked += 1
    assert checked == len(encoder.trainable_variables) + len(head.trainable_variables)
    # Kernels of convolutions and dense layers are adapted and decayed.
    assert any(not opt.is_excluded(v) for v in encoder.trainable_variables)


def test_explicit_exclusion_by_owner():
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    opt = LARS(0.1)
    assert not opt.is_excluded(dense.kernel)
    opt.exclude_variables(dense.trainable_variables)
    assert opt.is_excluded(dense.kernel)


def numpy_lars(w, g, v, lr, momentum, wd, eta, excluded):
    if not excluded:
        g = g + wd * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        ratio = eta * w_norm / g_norm if (w_norm > 0 and g_norm > 0) else 1.0
    else:
        ratio = 1.0
    v = momentum * v + lr * ratio * g
    return w - v, v


def test_lars_steps_match_numpy():
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(size=(4, 3)).astype(np.float32)
    bias0 = rng.normal(size=(3,)).astype(np.float32)
    kernel, bias = keras.Variable(kernel0), keras.Variable(bias0)
    lr, momentum, wd, eta = 0.5, 0.9, 1e-2, 0.001
    opt = LARS(lr, momentum=momentum, weight_decay=wd, eta=eta)
    w_np, b_np = kernel0.astype(np.float64), bias0.astype(np.float64)
    vw, vb = np.zeros_like(w_np), np.zeros_like(b_np)
    for step in range(3):
        gk = rng.normal(size=(4, 3)).astype(np.float32)
        gb = rng.normal(size=(3,)).astype(np.float32)
        opt.apply_gradients([(gk, kernel), (gb, bias)])
        w_np, vw = numpy_lars(w_np, gk, vw, lr, momentum, wd, eta, excluded=False)
        b_np, vb = numpy_lars(b_np, gb, vb, lr, momentum, wd, eta, excluded=True)
        np.testing.assert_allclose(kernel.numpy(), w_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bias.numpy(), b_np, rtol=1e-5, atol=1e-6)


def test_an_excluded_matrix_steps_without_decay_or_trust_ratio_through_apply_gradients():
    # The exclusion used to be keyed by id() of the Keras variable while update_step sees the
    # backend variable: is_excluded() said True and every step still decayed and rescaled.
    rng = np.random.default_rng(1)
    kernel0, other0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    lr, momentum, wd, eta = 0.5, 0.9, 1e-1, 0.001
    kernel, other = keras.Variable(kernel0), keras.Variable(other0)
    opt = LARS(lr, momentum=momentum, weight_decay=wd, eta=eta)
    opt.exclude_variables([kernel])
    w_np, o_np = kernel0.astype(np.float64), other0.astype(np.float64)
    vw, vo = np.zeros_like(w_np), np.zeros_like(o_np)
    for step in range(2):
        gk, go = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
        opt.apply_gradients([(gk, kernel), (go, other)])
        w_np, vw = numpy_lars(w_np, gk, vw, lr, momentum, wd, eta, excluded=True)
        o_np, vo = numpy_lars(o_np, go, vo, lr, momentum, wd, eta, excluded=False)
        np.testing.assert_allclose(kernel.numpy(), w_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(other.numpy(), o_np, rtol=1e-5, atol=1e-6)


def test_an_exclusion_holds_for_the_variable_a_replica_updates(two_cpu_strategy):
    import tensorflow as tf

    with two_cpu_strategy.scope():
        kernel, other = keras.Variable(np.ones((4, 3), np.float32)), keras.Variable(np.ones((4, 3), np.float32))
        opt = LARS(0.1)
        opt.exclude_variables([kernel])
        opt.build([kernel, other])

    def replica():  # what update_step receives: the replica's component of the mirrored variable
        return tf.constant([opt.is_excluded(kernel.value), opt.is_excluded(other.value)])

    for flags in two_cpu_strategy.experimental_local_results(two_cpu_strategy.run(replica)):
        assert flags.numpy().tolist() == [True, False]


def test_lars_zero_weights_use_ratio_one():
    w = keras.Variable(np.zeros((2, 2), np.float32))
    opt = LARS(0.1, momentum=0.0, weight_decay=0.0)
    opt.apply_gradients([(np.ones((2, 2), np.float32), w)])
    np.testing.assert_allclose(w.numpy(), -0.1 * np.ones((2, 2)), rtol=1e-6)


def test_lars_config_round_trip():
    opt = LARS(WarmupCosine(1.2, 100, 10), momentum=0.8, weight_decay=1e-5, eta=0.002, nesterov=True)
    clone = LARS.from_config(opt.get_config())
    assert (clone.momentum, clone.lars_weight_decay, clone.eta, clone.nesterov) == (0.8, 1e-5, 0.002, True)


def test_warmup_cosine_values():
    s = WarmupCosine(peak=1.0, total_steps=110, warmup_steps=10)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(s(60)), 0.5, rtol=1e-5)
    np.testing.assert_allclose(float(s(110)), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(s(500)), 0.0, atol=1e-6)
    assert WarmupCosine.from_config(s.get_config()).get_config() == s.get_config()


def test_learning_rate_scaling():
    assert scale_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scale_learning_rate(0.075, 256, "sqrt") == pytest.approx(1.2)
    assert scale_learning_rate(0.1, 512, "none") == 0.1
    with pytest.raises(UserError, match="scaling"):
        scale_learning_rate(0.1, 256, "cubic")
    with pytest.raises(UserError, match="optimizer"):
        build_optimizer("adagrad", 0.1)
