"""The VAE (`--method=vae`): its loss against NumPy, the reparameterisation's gradient,
reproducible samples, the likelihood bounds, the generative evaluations, and a tiny run
through the binaries whose SavedModel decodes and samples without keras.

One device vs two replicas, mixed precision and the method contract (train, resume,
evaluate, export, every signature served) come from the registry-driven tests."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.encoders import build_encoder, with_unpooled
from keras_ssl.errors import UserError
from keras_ssl.models.vae import VAE
from tests.helpers import BLOCK_KERAS

PY = sys.executable


# -- the loss against NumPy ------------------------------------------------------

def _logistic_mass(lower, upper, mean, scale):
    """P(lower < X < upper) for a logistic, from the tail it lies in (no cancellation)."""
    cdf = lambda u: 1.0 / (1.0 + np.exp(-(u - mean) / scale))  # noqa: E731
    survival = lambda u: 1.0 / (1.0 + np.exp((u - mean) / scale))  # noqa: E731
    return np.where(lower > mean, survival(lower) - survival(upper), cdf(upper) - cdf(lower))


def _numpy_negative_elbo(pixels, logits, log_scales, mean, log_variance, beta):
    """Per image: -log p(x|z) of a discretised logistic per 8-bit value (mass of the bin
    [(k - 0.5) / 255, (k + 0.5) / 255], the end bins open) + beta * KL(N(mean, var) || N(0, I))."""
    x = pixels.astype(np.float64) / 255.0
    mu = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    scale = np.exp(log_scales.astype(np.float64))
    upper = np.where(pixels == 255, np.inf, x + 0.5 / 255.0)
    lower = np.where(pixels == 0, -np.inf, x - 0.5 / 255.0)
    nll = -np.log(_logistic_mass(lower, upper, mu, scale)).reshape(len(pixels), -1).sum(axis=1)
    var = np.exp(log_variance.astype(np.float64))
    kl = 0.5 * np.sum(mean ** 2 + var - 1.0 - log_variance)
    return nll, np.full(len(pixels), kl), nll + beta * kl


def _fixed_vae(image_shape, mean, log_variance, logits, log_scales, beta):
    """A VAE whose posterior gives `mean`/`log_variance` and whose decoder gives per-pixel
    `logits`/`log_scales` whatever the image and z (zero kernels, the values as biases)."""
    import keras

    encoder = build_encoder("small_cnn", image_shape, 0.25)
    grid = keras.Input(tuple(with_unpooled(encoder).output["unpooled"].shape[1:]))
    flat = keras.layers.Flatten()(grid)
    heads = [keras.layers.Dense(len(v), kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(v))
             (flat) for v in (mean, log_variance)]
    decoder_bias = np.concatenate([logits, log_scales], axis=-1).reshape(-1)  # C logits, then C log-scales
    decoder = keras.Sequential([keras.Input((len(mean),)),
                                keras.layers.Dense(decoder_bias.size, kernel_initializer="zeros",
                                                   bias_initializer=keras.initializers.Constant(decoder_bias)),
                                keras.layers.Reshape((*image_shape[:2], 2 * image_shape[2]))])
    return VAE(encoder, latent_dim=len(mean), beta=beta, posterior=keras.Model(grid, heads), decoder=decoder)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_loss_and_metrics_equal_a_numpy_negative_elbo(beta):
    rng = np.random.default_rng(0)
    shape = (8, 8, 3)
    mean, log_variance = rng.normal(size=4), rng.normal(scale=0.5, size=4)
    logits, log_scales = rng.normal(size=shape), rng.uniform(-4.0, -1.0, size=shape)
    model = _fixed_vae(shape, mean, log_variance, logits, log_scales, beta)
    pixels = rng.integers(0, 256, size=(5, *shape)).astype(np.uint8)
    pixels[0, :2], pixels[1, :2] = 0, 255  # the open end bins
    nll, kl, loss = _numpy_negative_elbo(pixels, logits, log_scales, mean, log_variance, beta)

    got = model.method_loss(tf.constant(pixels), training=False)  # one device: the batch mean
    np.testing.assert_allclose(float(got), loss.mean(), rtol=1e-5)
    results = {m.name: float(m.result()) for m in model.metrics}
    np.testing.assert_allclose(results["reconstruction"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["kl"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["elbo"], -(nll + kl).mean(), rtol=1e-5)
    np.testing.assert_allclose(results["bits_per_dim"], (nll + kl).mean() / (np.prod(shape) * math.log(2)),
                               rtol=1e-5)
    # floats in [0, 1] are read as round(x * 255): the same 8-bit image, the same loss
    floats = model.method_loss(tf.constant(pixels.astype(np.float32) / 255.0), training=False)
    np.testing.assert_allclose(float(floats), float(got), rtol=1e-6)
    np.testing.assert_allclose(model.negative_elbo(pixels).numpy(), nll + kl, rtol=1e-5)  # beta = 1 always


def test_the_reparameterisation_carries_the_reconstruction_gradient_to_the_encoder():
    """With beta = 0 only -log p(x|z) remains: the log-variance head and the encoder get
    gradients only through z = mean + exp(log_variance / 2) * eps."""
    model = VAE(build_encoder("small_cnn", (8, 8, 1), 0.25), latent_dim=4, beta=0.0)
    x = tf.constant(np.random.default_rng(1).integers(0, 256, size=(6, 8, 8, 1)).astype(np.uint8))
    variables = model.encoder.trainable_variables + model.posterior.trainable_variables
    with tf.GradientTape() as tape:
        loss = model.method_loss(x, training=True)
    gradients = tape.gradient(loss, variables)
    for variable, gradient in zip(variables, gradients):
        assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0, variable.path


def test_labels_and_wrong_batches_are_refused_in_one_line():
    model = VAE(build_encoder("small_cnn", (8, 8, 1), 0.25), latent_dim=4)
    model.compile(optimizer="adam")
    x = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(UserError, match="learns without labels") as error:
        model.fit(x, np.zeros(4, np.int32), epochs=1, verbose=0)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match=r"latent_dim >= 1 and beta >= 0"):
        VAE(build_encoder("small_cnn", (8, 8, 1), 0.25), latent_dim=0)


# -- a tiny run through the binaries ----------------------------------------------

def _run(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([PY, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


SERVE = BLOCK_KERAS + textwrap.dedent('''
    import numpy as np, tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    seeds = tf.constant([3, 7, 3, 11], tf.int64)
    first, second = m.signatures["sample"](seeds=seeds), m.signatures["sample"](seeds=seeds)
    latent = tf.constant(np.load(sys.argv[2]), tf.float32)
    print(json.dumps({"samples": first["images"].numpy().tolist(), "again": second["images"].numpy().tolist(),
                      "latents": first["latent"].numpy().tolist(),
                      "decoded": m.signatures["decode"](latent=latent)["images"].numpy().tolist(),
                      "dtype": first["images"].dtype.name, "signatures": sorted(m.signatures),
                      "keras_loaded": "keras" in sys.modules or "keras_ssl" in sys.modules}))
''')


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """`--dataset=digits --image_size=16` trained, exported, and its `sample`/`decode`
    served in a process that cannot import keras."""
    root = tmp_path_factory.mktemp("vae")
    model_dir = str(root / "run")
    _run(["keras_ssl.bin.train", "--method=vae", "--dataset=digits", "--image_size=16", "--epochs=1",
          "--steps_per_epoch=30", "--batch_size=32", "--width_multiplier=0.25", "--latent_dim=8",
          "--dtype_policy=float32", f"--model_dir={model_dir}", "--verbose=0"], root)
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={root / 'exports'}"], root)
    path = proc.stdout.strip().splitlines()[-1].split("exported: ")[-1]
    latents = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.save(root / "latents.npy", latents)
    served = subprocess.run([PY, "-c", SERVE, path, str(root / "latents.npy")], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert served.returncode == 0, served.stderr[-3000:]
    from keras_ssl.saving import load_model

    return dict(model=load_model(os.path.join(model_dir, "model.keras")), model_dir=model_dir, root=root,
                latents=latents, served=json.loads(served.stdout.strip().splitlines()[-1]))


def test_the_run_trains_a_16px_model(exported_run):
    training = json.load(open(os.path.join(exported_run["model_dir"], "training.json")))
    metrics = training["final_metrics"]
    assert np.isfinite(metrics["loss"]) and metrics["elbo"] == pytest.approx(-metrics["loss"], rel=1e-4)  # beta 1
    assert 0 < metrics["bits_per_dim"] < 8  # below 8 bits per 8-bit value: it learnt something
    assert exported_run["model"].image_shape == (16, 16, 1)


def test_served_samples_are_reproducible_uint8_and_equal_the_model(exported_run):
    served, model = exported_run["served"], exported_run["model"]
    assert not served["keras_loaded"] and served["dtype"] == "uint8"
    assert {"serving_default", "embed_pixels", "encode", "decode", "sample"} <= set(served["signatures"])
    samples = np.array(served["samples"])
    assert samples.shape == (4, 16, 16, 1)
    assert samples.tolist() == served["again"]  # the same seeds, the same images
    assert np.array_equal(samples[0], samples[2]) and not np.array_equal(samples[0], samples[1])
    latents = np.array(served["latents"])
    assert np.array_equal(latents[0], latents[2]) and not np.allclose(latents[0], latents[3])
    np.testing.assert_allclose(latents, model.sample_latents(np.array([3, 7, 3, 11])).numpy(), atol=1e-6)
    np.testing.assert_allclose(samples, model.sample_images(np.array([3, 7, 3, 11])).numpy(), atol=1)
    decoded = np.array(served["decoded"])
    assert decoded.shape == (3, 16, 16, 1)
    np.testing.assert_allclose(decoded, model.decode_images(exported_run["latents"]).numpy(), atol=1)


@pytest.fixture(scope="module")
def test_images():
    from keras_ssl.data.sources import load_source

    return load_source("digits", image_size=(16, 16)).test.images[:64]


def test_the_importance_weighted_bound_is_tighter_and_with_one_sample_the_elbo(exported_run, test_images):
    model = exported_run["model"]
    nelbo = np.mean([model.negative_elbo(test_images, (s, 0)).numpy() for s in range(8)], axis=0)
    iwae = model.importance_weighted_nll(test_images, 100, (0, 1)).numpy()
    assert np.all(np.isfinite(iwae)) and iwae.mean() < nelbo.mean(), (iwae.mean(), nelbo.mean())
    # k = 1: the ELBO with its KL estimated by the same sample; the same in expectation
    single = np.mean([model.importance_weighted_nll(test_images, 1, (s, 0)).numpy() for s in range(8)], axis=0)
    assert abs(single.mean() - nelbo.mean()) < 1.0 + 0.01 * nelbo.mean(), (single.mean(), nelbo.mean())


def test_the_generative_evaluations(exported_run, test_images, tmp_path):
    from keras_ssl.evaluation.generative import likelihood_metrics, reconstruction_metrics, sample_metrics

    model = exported_run["model"]
    likelihood = likelihood_metrics(model, test_images[:20], iwae_k=10, batch_size=8)
    assert likelihood["iwae_samples"] == 10 and likelihood["iwae_images"] == 20
    assert likelihood["test_bits_per_dim"] == pytest.approx(likelihood["test_nelbo_nats"] / (256 * math.log(2)))
    assert likelihood["test_iwae_bits_per_dim"] == pytest.approx(likelihood["test_iwae_nats"] / (256 * math.log(2)))
    assert 0 < likelihood["test_iwae_bits_per_dim"] < 8 and 0 < likelihood["test_bits_per_dim"] < 8
    reconstruction = reconstruction_metrics(model, test_images, str(tmp_path / "r.png"))
    assert 0 < reconstruction["reconstruction_mse"] < 0.25
    assert os.path.getsize(reconstruction["reconstruction_plot"]) > 1000
    samples = sample_metrics(model, test_images, str(tmp_path))
    assert samples["sample_seeds"] == list(range(64)) and 0 <= samples["active_units"] <= 8
    for key in ("samples_plot", "traversal_plot"):
        assert os.path.getsize(samples[key]) > 1000, key
    assert "samples_plot" not in sample_metrics(model, test_images, None)  # no directory, no plots


def test_the_printed_report_shows_the_declared_numbers_beside_the_probe_table():
    # keras-ssl-evaluate printed only the probe's table: a VAE's bits/dim were in evaluation.json only.
    from keras_ssl.evaluation.method_evaluations import evaluation
    from keras_ssl.evaluation.report import format_table
    from keras_ssl.evaluation.run_report import _with_declared_rows

    results = {"linear_probe_accuracy": 0.84, "knn_accuracy": 0.8, "knn_accuracy_k20": 0.8, "feature_dim": 64,
               "test_bits_per_dim": 4.0871, "test_nelbo_nats": 2220.8, "test_iwae_bits_per_dim": 4.01,
               "test_iwae_nats": 2179.1, "iwae_samples": 100, "iwae_images": 64}
    table = format_table(results)
    lines = _with_declared_rows(table, [evaluation("likelihood")], results).splitlines()
    assert [line.split() for line in lines[4:]] == [
        ["test_nelbo_nats", "2220.8"], ["test_bits_per_dim", "4.0871"],
        ["test_iwae_nats", "2179.1"], ["test_iwae_bits_per_dim", "4.01"], ["iwae_samples", "100"],
        ["iwae_images", "64"]]
    assert len({len(line) for line in lines if not line.startswith("-")}) == 1  # one column layout
