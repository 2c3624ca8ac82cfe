"""The VQ-VAE prior (keras_ssl.models.vqvae_prior): the masked convolutions' receptive
field, the loss against NumPy, reproducible sampling, and the two stages through the
binaries with the SavedModel served without keras (issue 32, item 3)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.layers_masked import MaskedConv2D, causal_mask
from keras_ssl.models.vqvae import VQVAE
from keras_ssl.models.vqvae_prior import VQVAEPrior, code_cross_entropy, gated_pixelcnn
from tests.helpers import BLOCK_KERAS

K = 6


def _input_gradient(prior, i, j):
    """|d logits[i, j, :] . r / d embedded input| summed over channels: `[h, w]`."""
    embedded = prior.get_layer("embedding").output
    tail = keras.Model(embedded, prior.output)
    h, w = prior.input_shape[1:3]
    x = tf.random.stateless_normal([1, h, w, int(embedded.shape[-1])], (1, 2))
    r = tf.random.stateless_normal([int(prior.output.shape[-1])], (3, 4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(tail(x)[0, i, j] * r)
    return np.abs(tape.gradient(out, x).numpy()[0]).sum(-1)


@pytest.mark.parametrize("layers", [1, 3])
def test_the_logits_of_a_position_see_exactly_the_earlier_positions(layers):
    """Row-major order: the gradient of position (i, j)'s logits is zero at (i, j) and every
    later position, and non-zero at every earlier one (no blind spot: the positions up and to
    the right, which a single masked stack misses, included)."""
    keras.utils.set_random_seed(0)
    h, w = 4, 5
    prior = gated_pixelcnn((h, w), K, channels=8, layers=layers)
    order = np.arange(h * w).reshape(h, w)
    for i, j in [(0, 0), (0, 3), (1, 0), (2, 2), (3, 4), (1, 4)]:
        grad = _input_gradient(prior, i, j)
        later = order >= order[i, j]
        assert np.all(grad[later] == 0.0), (i, j, grad)
        earlier = order < order[i, j]
        assert np.all(grad[earlier] > 0.0), (i, j, grad)


def test_masks_of_type_a_hide_the_centre_and_type_b_keeps_it():
    assert causal_mask((3, 3), "vertical", "A").tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert causal_mask((3, 3), "vertical", "B").tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    assert causal_mask((1, 5), "horizontal", "A").tolist() == [[1, 1, 0, 0, 0]]
    assert causal_mask((1, 5), "horizontal", "B").tolist() == [[1, 1, 1, 0, 0]]
    layer = MaskedConv2D(2, (1, 3), stack="horizontal", mask_type="A")
    again = MaskedConv2D.from_config(layer.get_config())
    assert (again.stack, again.mask_type, again.padding) == ("horizontal", "A", "same")


def tiny_prior(**options):
    """A VQ-VAE of 4x4 images with a 2x2 grid of K codes, and a small prior over it."""
    keras.utils.set_random_seed(3)
    images = keras.Input((4, 4, 1))
    grid = keras.layers.Conv2D(3, 2, strides=2, name="grid")(images)
    encoder = keras.Model(images, keras.layers.GlobalAveragePooling2D()(grid), name="tiny_encoder")
    quantized = keras.Input((2, 2, 2))
    up = keras.layers.UpSampling2D(2)(quantized)
    decoder = keras.Model(quantized, keras.layers.Conv2D(2, 1, dtype="float32", name="pixels")(up), name="decoder")
    vqvae = VQVAE(encoder, decoder=decoder, codebook_size=K, code_dim=2)
    return VQVAEPrior(vqvae, **dict(dict(prior_channels=8, prior_layers=2), **options))


def _numpy_cross_entropy(logits, codes):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, codes[..., None], -1)[..., 0].sum((1, 2))


def test_the_loss_is_numpys_cross_entropy_summed_over_positions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 2, 4, K)).astype(np.float32) * 3
    codes = rng.integers(0, K, (3, 2, 4))
    np.testing.assert_allclose(code_cross_entropy(logits, codes).numpy(), _numpy_cross_entropy(logits, codes),
                               rtol=1e-5)

    model = tiny_prior()
    grids = rng.integers(0, K, (5, 2, 2)).astype(np.int32)
    want = _numpy_cross_entropy(model.code_logits(grids).numpy(), grids)
    np.testing.assert_allclose(model.code_nll(grids).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(model.code_nll(grids.reshape(5, 4)).numpy(), want, rtol=1e-5)  # row-major tokens
    loss = model.method_loss(tf.constant(grids), training=False)
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(model.trackers["bits_per_code"].result()), want.mean() / (4 * np.log(2)),
                               rtol=1e-5)
    with pytest.raises(UserError, match=r"codes must be in \[0, 6\)"):
        model.code_nll(np.full((1, 4), K))


def test_sampling_is_reproducible_per_seed_and_seeds_differ():
    model = tiny_prior()
    codes = model.sample_codes(np.array([3, 5, 3, 7, 11, 13], np.int32)).numpy()
    assert codes.shape == (6, 2, 2) and codes.min() >= 0 and codes.max() < K
    assert codes[0].tolist() == codes[2].tolist()
    np.testing.assert_array_equal(model.sample_codes(np.array([5], np.int32)).numpy()[0], codes[1])  # batch-free
    assert len({tuple(c.ravel()) for c in codes[[0, 1, 3, 4, 5]]}) > 1
    images = model.sample_images(np.array([3, 5], np.int32)).numpy()
    assert images.dtype == np.uint8 and images.shape == (2, 4, 4, 1)
    np.testing.assert_array_equal(images, model.decode_images(codes[:2]).numpy())


def test_sampling_draws_from_the_prior():
    """The first position's code follows softmax(logits) there (it sees nothing): the
    frequencies over 2000 seeds match within a few standard errors."""
    model = tiny_prior(prior_channels=4, prior_layers=1)
    first = model.sample_codes(np.arange(2000, dtype=np.int32)).numpy()[:, 0, 0]
    p = tf.nn.softmax(model.code_logits(np.zeros((1, 2, 2), np.int32))[0, 0, 0]).numpy()
    freq = np.bincount(first, minlength=K) / len(first)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(first)) + 1e-3), (freq, p)


def test_the_saved_model_keeps_the_frozen_parent(tmp_path):
    model = tiny_prior()
    assert not model.vqvae.trainable
    assert [id(v) for v in model.trainable_variables] == [id(v) for v in model.prior.trainable_variables]
    path = str(tmp_path / "prior.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    grids = np.random.default_rng(1).integers(0, K, (3, 2, 2)).astype(np.int32)
    np.testing.assert_allclose(loaded.code_nll(grids).numpy(), model.code_nll(grids).numpy(), rtol=1e-6)
    seeds = np.array([1, 2], np.int32)
    np.testing.assert_array_equal(loaded.sample_images(seeds).numpy(), model.sample_images(seeds).numpy())
    assert not loaded.vqvae.trainable


SERVE = BLOCK_KERAS + textwrap.dedent('''
    import numpy as np, tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    seeds = tf.constant([4, 9, 4], tf.int64)
    first = m.signatures["sample"](seeds=seeds)
    second = m.signatures["serving_default"](seeds=seeds)
    codes = tf.reshape(tf.cast(first["codes"], tf.int64), [3, -1])
    nats = m.signatures["log_prob"](codes=codes)["nats"]
    try:
        m.signatures["log_prob"](codes=tf.fill([1, codes.shape[1]], tf.constant(int(sys.argv[2]), tf.int64)))
        refused = None
    except Exception as e:
        refused = str(e)
    print(json.dumps({"images": first["images"].numpy().tolist(), "again": second["images"].numpy().tolist(),
                      "codes": first["codes"].numpy().tolist(), "nats": nats.numpy().tolist(), "refused": refused,
                      "keras_loaded": "keras" in sys.modules or "keras_ssl" in sys.modules}))
''')


def test_two_stages_through_the_binaries_served_without_keras(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp_path)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    tiny = ["--dataset=digits", "--image_size=16", "--epochs=1", "--steps_per_epoch=2", "--batch_size=16",
            "--width_multiplier=0.25", "--dtype_policy=float32", "--verbose=0"]
    parent, prior, codebook_size = str(tmp_path / "vqvae"), str(tmp_path / "prior"), 32
    run("keras_ssl.bin.train", "--method=vqvae", *tiny, f"--codebook_size={codebook_size}", "--code_dim=8",
        "--decoder_hidden_dim=16", f"--model_dir={parent}")
    run("keras_ssl.bin.train", "--method=vqvae_prior", *tiny, "--prior_channels=16", "--prior_layers=2",
        f"--parent_run={parent}", f"--model_dir={prior}")
    training = json.load(open(os.path.join(prior, "training.json")))
    assert {"loss", "bits_per_code", "accuracy"} <= set(training["final_metrics"])
    with np.load(os.path.join(prior, "prepared.npz")) as prepared:
        assert prepared["codes"].shape[1:] == (4, 4) and prepared["codes"].dtype == np.int32
    run("keras_ssl.bin.evaluate", f"--model_dir={prior}", "--plot=none", "--probe_max_iter=100")
    report = json.load(open(os.path.join(prior, "evaluation.json")))
    # the bound: the prior's bits of the codes plus the decoder's bits of the image given them
    assert report["test_nats"] == pytest.approx(report["prior_nats_per_grid"] + report["recon_nll_nats"])
    assert report["test_bits_per_dim"] == pytest.approx(report["test_nats"] / (16 * 16 * np.log(2)))
    assert 0 < report["prior_bits_per_code"] <= np.log2(codebook_size) + 1
    assert os.path.getsize(report["samples_plot"]) > 1000
    proc = run("keras_ssl.bin.export", f"--model_dir={prior}", f"--export_root={tmp_path / 'exports'}")
    path = proc.stdout.strip().splitlines()[-1].split("exported: ")[-1]
    proc = subprocess.run([sys.executable, "-c", SERVE, path, str(codebook_size)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not served["keras_loaded"]
    images = np.asarray(served["images"])
    assert images.shape == (3, 16, 16, 1) and served["images"] == served["again"]
    assert images[0].tolist() == images[2].tolist() and np.asarray(served["codes"]).shape == (3, 4, 4)
    assert all(np.isfinite(served["nats"])) and min(served["nats"]) > 0
    assert served["refused"] and f"token ids must be in [0, {codebook_size})" in served["refused"]
