"""The contract's hooks (keras_ssl.models.hooks): parameter groups (gradient scale, no
weight decay) and momentum pairs (a target network as a moving average of the online
one, on BYOL's schedule), checked against NumPy on one device and two replicas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.models.common import MethodModel, split_data
from keras_ssl.models.hooks import MomentumPair, ParameterGroup, momentum_tau

SEED = 7


class TwoPart(MethodModel):
    """`encoder` and `head` Dense layers, loss = mean(head(encoder(x))^2); the encoder's
    group gets `encoder_scale`; with `tau`, a `target` copy of the encoder follows it."""

    SUB_MODELS = ("encoder", "head", "target")

    def __init__(self, encoder_scale=1.0, tau=None, **kwargs):
        super().__init__(**kwargs)
        keras.utils.set_random_seed(SEED)
        self.encoder = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)], name="encoder")
        self.head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="head")
        self.target = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)], name="target")
        self.target.set_weights([w * 0 + 0.5 for w in self.encoder.get_weights()])
        self.encoder_scale, self.tau = encoder_scale, tau
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.build()

    @property
    def metrics(self):
        return [self.loss_tracker]

    def method_loss(self, data, training):
        from keras_ssl.models.common import global_batch_size

        x, _ = split_data(data)
        out = tf.square(self.head(self.encoder(x)))[:, 0]
        self.loss_tracker.update_state(tf.reduce_mean(out))
        return tf.reduce_sum(out) / tf.cast(global_batch_size(tf.shape(out)[0]), tf.float32)

    def parameter_groups(self):
        return [ParameterGroup("encoder", tuple(self.encoder.trainable_variables), self.encoder_scale)]

    def momentum_pairs(self):
        return [MomentumPair(self.encoder, self.target, self.tau, 1.0)] if self.tau is not None else []


def _step(model, x, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        model.compile(optimizer=keras.optimizers.SGD(1.0))
    before = [[w.copy() for w in m.get_weights()] for m in (model.encoder, model.head, model.target)]
    model.fit(tf.data.Dataset.from_tensors(x), epochs=1, verbose=0)
    after = [m.get_weights() for m in (model.encoder, model.head, model.target)]
    return before, after


X = np.random.default_rng(SEED).normal(size=(8, 3)).astype(np.float32)


def test_a_gradient_scale_scales_only_its_group():
    (e0, h0, _), (e1, h1, _) = _step(TwoPart(1.0), X)
    (f0, g0, _), (f1, g1, _) = _step(TwoPart(0.1), X)
    for a, b, c, d in zip(e0, e1, f0, f1):  # same start (seeded), a tenth of the encoder's step
        np.testing.assert_allclose(c, a, err_msg=f"seed {SEED}")
        np.testing.assert_allclose(d - c, 0.1 * (b - a), rtol=1e-4, atol=1e-7, err_msg=f"seed {SEED}")
    for a, b, c, d in zip(h0, h1, g0, g1):  # the head's step is untouched
        np.testing.assert_allclose(d - c, b - a, rtol=1e-5, atol=1e-7, err_msg=f"seed {SEED}")


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_momentum_pair_follows_its_online_network(replicas, two_cpu_strategy):
    strategy = two_cpu_strategy if replicas == 2 else None
    with (strategy or tf.distribute.get_strategy()).scope():
        model = TwoPart(tau=0.9)
    (_, _, t0), (e1, _, t1) = _step(model, X, strategy)
    for before, online, after in zip(t0, e1, t1):  # total_steps unknown: tau = base_tau
        np.testing.assert_allclose(after, 0.9 * before + 0.1 * online, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{replicas} replica(s), seed {SEED}")


def test_byol_schedule_and_probe_without_weight_decay():
    assert float(momentum_tau(0, 10, 0.996, 1.0)) == pytest.approx(0.996)
    assert float(momentum_tau(5, 10, 0.996, 1.0)) == pytest.approx(0.998)
    assert float(momentum_tau(10, 10, 0.996, 1.0)) == pytest.approx(1.0)
    assert float(momentum_tau(20, 10, 0.99, 1.0)) == pytest.approx(1.0)  # stays at the end
    assert momentum_tau(3, None, 0.99, 1.0) == 0.99
    with pytest.raises(ValueError, match="base_tau <= final_tau"):
        MomentumPair(None, None, 1.0, 0.9)

    from keras_ssl.encoders import small_cnn
    from keras_ssl.models import RotationPrediction
    from keras_ssl.optimizers import LARS

    model = RotationPrediction(small_cnn((8, 8, 1), width_multiplier=0.25), num_classes=10)
    probe_kernel = next(v for v in model.probe.trainable_variables if len(v.shape) == 2)
    encoder_kernel = next(v for v in model.encoder.trainable_variables if len(v.shape) == 4)
    model.compile(optimizer=LARS(0.1, weight_decay=1e-4))
    assert model.optimizer.is_excluded(probe_kernel) and not model.optimizer.is_excluded(encoder_kernel)
    model.compile(optimizer=keras.optimizers.AdamW(0.1, weight_decay=0.5))
    model.optimizer.build(model.trainable_variables)
    assert not model.optimizer._use_weight_decay(probe_kernel) and model.optimizer._use_weight_decay(encoder_kernel)


def test_encoders_give_their_probe_points_and_unpooled_output_from_the_graph():
    """Probe points are found from the graph (stage ends read by a pooling layer or a strided
    convolution), not from `blockN` names; `with_unpooled` gives the grid or sequence
    before pooling beside the pooled representation, and the pooled one is its mean."""
    from keras_ssl.audio_encoders import build_audio_encoder
    from keras_ssl.encoders import feature_layer_names, resnet, small_cnn, with_unpooled

    assert feature_layer_names(small_cnn((28, 28, 1), 0.25)) == ["block1", "block2", "block3", "features"]
    assert feature_layer_names(resnet(18, (64, 64, 3), cifar_stem=False, width_multiplier=0.25)) == [
        "stem_relu", "block1", "block2", "block3", "block4", "features"]
    # a bottleneck's strided 3x3 reads a layer inside the block, which the shortcut bypasses: no stage end
    assert feature_layer_names(resnet(50, (32, 32, 3), width_multiplier=0.25)) == [
        "block1", "block2", "block3", "block4", "features"]
    renamed = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, name="a"),
                                keras.layers.Conv2D(4, 3, strides=2, name="b"),
                                keras.layers.GlobalAveragePooling2D(name="out")])
    assert feature_layer_names(renamed) == ["a", "b", "out"]  # any names
    images = np.random.default_rng(SEED).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    encoder = small_cnn((28, 28, 1), 0.25)
    out = with_unpooled(encoder)(images)
    assert out["unpooled"].shape == (2, 7, 7, 32)
    np.testing.assert_allclose(out["pooled"], encoder(images), atol=1e-5, err_msg=f"seed {SEED}")
    np.testing.assert_allclose(out["pooled"], np.mean(out["unpooled"], axis=(1, 2)), atol=1e-5)
    audio = build_audio_encoder("cpc_conv", 0.25)
    frames = with_unpooled(audio)(np.zeros((2, 1600), np.float32))
    assert frames["unpooled"].shape == (2, 10, 128) and frames["pooled"].shape == (2, 128)
