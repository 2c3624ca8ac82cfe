"""Every method: one device and 2 logical CPU replicas give the same loss and update
on the same global batch (issue 6); every method trains under mixed precision."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.models import registry
from keras_ssl.training import build_model, load_run_dataset, method_data, train
from tests.helpers import smoke_config

# Every registered method, on its own tiny settings (8x8 digits, relative position upsampled;
# chirps for the audio methods): tests.helpers.smoke_config.
METHODS = registry.names()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke_data")


def _data(config):
    return load_run_dataset(config)


def _step(strategy, config, dataset, batch, weights=None):
    """One SGD step on `batch` under `strategy`: (loss, weights before, weights after)."""
    with strategy.scope():
        model = build_model(config, dataset)
        if weights is not None:
            model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    before = [v.numpy() for v in model.weights]
    hist = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False)
    return hist.history["loss"][0], before, [v.numpy() for v in model.weights]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_replicas_match_one_device(method, two_cpu_strategy, data_root):
    keras.utils.set_random_seed(0)
    config = smoke_config(method, data_root)
    dataset = _data(config)
    data = method_data(config, dataset.train.take(400)).dataset
    assert data.options().autotune.enabled is False  # whatever the method built (keras_ssl.data.finish)
    batch = next(iter(data))
    loss1, w0, w1 = _step(tf.distribute.get_strategy(), config, dataset, batch)
    loss2, _, w2 = _step(two_cpu_strategy, config, dataset, batch, weights=w0)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    moved = 0
    for start, a, b in zip(w0, w1, w2):
        np.testing.assert_allclose(b - start, a - start, rtol=1e-3, atol=2e-5)
        moved += int(np.any(a != start))
    assert moved > 0  # the step did something to compare


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_trains_under_mixed_precision(method, policy, tmp_path, data_root):
    config = smoke_config(method, data_root, dtype_policy=policy, epochs=1, steps_per_epoch=3,
                          model_dir=str(tmp_path), optimizer="adam", learning_rate=1e-3, lr_scaling="none",
                          warmup_epochs=0, verbose=0)
    result = train(config)
    assert keras.mixed_precision.global_policy().name == "float32"  # the caller's policy is back
    assert result["dtype_policy"] == policy
    assert result["final_metrics"] and all(math.isfinite(v) for v in result["final_metrics"].values())


def test_auto_dtype_policy_is_recorded_as_asked(tmp_path):
    config = smoke_config("rotation", tmp_path, epochs=1, steps_per_epoch=1, model_dir=str(tmp_path), verbose=0)
    assert config.dtype_policy == "auto"
    result = train(config)
    from keras_ssl.precision import resolve_dtype_policy

    assert result["dtype_policy"] == resolve_dtype_policy("auto") != "auto"
    assert config.to_dict()["dtype_policy"] == "auto"


def test_float16_embeddings_do_not_overflow_masks_or_logits():
    """Losses cast to float32 first: float16 inputs (mixed_float16) give the
    float32 value, finite, even with a low temperature and far-apart embeddings."""
    from keras_ssl.losses import batch_triplet, contrastive, nt_xent, triplet

    rng = np.random.default_rng(0)
    z = (rng.normal(size=(16, 8)) * 30).astype(np.float16)  # squared distances ~1e4: near float16's max
    labels = tf.constant(np.repeat(np.arange(4), 4))
    same = tf.constant(np.tile([1.0, 0.0], 4))
    cases = {
        "nt_xent": lambda e: nt_xent(e[:8], e[8:], temperature=0.05),
        "contrastive": lambda e: contrastive(same, e[:8], e[8:], margin=1.0),
        "triplet": lambda e: triplet(e[:5], e[5:10], e[10:15]),
    }
    for mining in ("semi_hard", "hard", "all"):
        for soft in (False, True):
            cases[f"batch_{mining}_{soft}"] = lambda e, m=mining, s=soft: batch_triplet(labels, e, 0.2, m, s)
    for name, fn in cases.items():
        got = fn(tf.constant(z))
        want = fn(tf.constant(z.astype(np.float32)))
        assert got.dtype == tf.float32, name
        assert np.isfinite(got.numpy()), name
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, err_msg=name)
