"""MAE (`--method=mae`) and image GPT (`--method=igpt`): MAE's mask (75% of the patches
per image, drawn per seed, the encoder blind to the masked ones) and its loss against
NumPy; iGPT's causal masking and its loss against a NumPy cross-entropy; a tiny run of
each trained and exported whose SavedModel reconstructs / completes and samples in a
process without keras or keras_ssl.

One device vs two replicas, mixed precision and the method contract (train, resume,
evaluate, export, every signature served) come from the registry-driven tests."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.image_transformers import block_names, pixel_transformer, vit_encoder
from keras_ssl.models.igpt import IGPT
from keras_ssl.models.mae import MAE
from tests.helpers import BLOCK_KERAS

PY = sys.executable


def _images(n, side, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 1)).astype(np.uint8)


def _numpy_patches(images, p):
    """[B, H, W, C] -> [B, N, p*p*C], written with loops (independent of `patchify`)."""
    b, h, w, c = images.shape
    return np.stack([np.stack([images[i, r:r + p, s:s + p].reshape(-1) for r in range(0, h, p)
                               for s in range(0, w, p)]) for i in range(b)])


@pytest.fixture(scope="module")
def mae():
    return MAE(vit_encoder((16, 16, 1), 4, 32, 2, 4), decoder_width=32, decoder_layers=1, seed=3)


# -- MAE -------------------------------------------------------------------------------


def test_mae_masks_three_quarters_of_the_patches_per_seed(mae):
    seeds = np.array([0, 1, 2, 0, 5, 6])
    _, _, mask = mae.reconstruct_masked(_images(6, 16), seeds)
    mask = mask.numpy()
    assert mask.shape == (6, 16) and set(np.unique(mask)) == {0.0, 1.0}
    assert np.all(mask.sum(axis=1) == 12)  # exactly 75% of the 16 patches of every image
    assert np.array_equal(mask[0], mask[3])  # a seed gives its mask
    assert len({tuple(m) for m in mask}) == 5  # other seeds other masks
    _, _, again = mae.reconstruct_masked(_images(2, 16, seed=1), [5, 0])  # whatever the images and batch
    assert np.array_equal(again.numpy(), mask[[4, 0]])


def test_the_mae_encoder_never_sees_the_masked_patches(mae):
    images = tf.constant(_images(3, 16).astype(np.float32) / 255.0)
    noise = tf.random.stateless_uniform([3, 16], [1, 2])
    from keras_ssl.models.mae import random_masking

    visible, _, mask = random_masking(noise, mae.keep)
    with tf.GradientTape() as tape:
        tape.watch(images)
        encoded = mae.encode_visible(images, visible)
        probe = tf.reduce_sum(encoded * tf.random.stateless_normal(tf.shape(encoded), [0, 1]))
    gradient = tape.gradient(probe, images).numpy()
    per_patch = np.abs(_numpy_patches(gradient, 4)).sum(axis=-1)  # [B, N]
    mask = mask.numpy()
    assert np.all(per_patch[mask == 1] == 0.0)  # no gradient reaches a masked pixel
    assert np.all(per_patch[mask == 0] > 0.0)  # every visible patch is read
    assert encoded.shape == (3, 4, 32)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_the_mae_loss_equals_numpy_on_the_masked_patches(norm_pix_loss):
    model = MAE(vit_encoder((16, 16, 1), 4, 32, 2, 4), decoder_width=32, decoder_layers=1, seed=7,
                norm_pix_loss=norm_pix_loss)
    pixels = _images(5, 16, seed=2)
    noise = tf.random.stateless_uniform([5, 16], [7, 0])  # the step's draw: seed 7, step 0
    predicted, mask = model.predict_patches(tf.constant(pixels.astype(np.float32) / 255.0), noise)
    predicted = predicted.numpy().astype(np.float64)
    target = _numpy_patches(pixels.astype(np.float64) / 255.0, 4)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
    order = np.argsort(noise.numpy(), axis=1, kind="stable")
    masked = np.ones((5, 16))
    masked[np.arange(5)[:, None], order[:, :4]] = 0.0  # the 4 of least noise are visible
    assert np.array_equal(mask.numpy(), masked)
    errors = ((predicted - target) ** 2).mean(-1)
    expected = (errors * masked).sum(1) / masked.sum(1)
    got = model.method_loss(tf.constant(pixels), training=False)  # one device: the batch mean
    np.testing.assert_allclose(float(got), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(model.trackers["loss"].result()), expected.mean(), rtol=1e-5)


# -- iGPT ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def igpt():
    return IGPT(pixel_transformer((6, 6, 1), 16, 32, 2, 4))


def test_igpt_logits_at_a_pixel_do_not_depend_on_it_or_later_pixels(igpt):
    base = _images(1, 6, seed=3)
    logits = igpt.pixel_logits(base).numpy()[0]
    for position in (0, 7, 20, 35):
        changed = base.copy().reshape(1, -1)
        changed[0, position:] = 255 - changed[0, position:]  # other palette levels from `position` on
        other = igpt.pixel_logits(changed.reshape(base.shape)).numpy()[0]
        np.testing.assert_allclose(other[:position + 1], logits[:position + 1], atol=1e-5)
        if position + 1 < 36:
            assert not np.allclose(other[position + 1:], logits[position + 1:], atol=1e-4)  # later ones read it


def test_the_igpt_loss_equals_a_numpy_cross_entropy(igpt):
    pixels = _images(4, 6, seed=4)
    logits = igpt.pixel_logits(pixels).numpy().astype(np.float64)  # [B, 36, 16]
    targets = (pixels.reshape(4, -1).astype(np.int64) * 16) // 256  # the 4 high bits
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
    got = igpt.method_loss(tf.constant(pixels), training=False)
    np.testing.assert_allclose(float(got), nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(igpt.trackers["bits_per_pixel"].result()), nll.mean() / np.log(2), rtol=1e-5)
    np.testing.assert_allclose(igpt.pixel_nll(pixels).numpy(), nll, rtol=1e-4, atol=1e-5)
    # floats in [0, 1] are read as round(255 x): the same palette indices, the same loss
    np.testing.assert_allclose(float(igpt.method_loss(tf.constant(pixels / 255.0, tf.float32), training=False)),
                               float(got), rtol=1e-6)


def test_igpt_completions_keep_the_given_rows_and_a_seed_gives_its_sample(igpt):
    pixels = _images(3, 6, seed=5)
    completed = igpt.complete_images(pixels, [4, 9, 4], given_rows=3).numpy()
    palette = ((pixels.astype(np.int64) * 16 // 256) * 16 + 8).astype(np.uint8)  # bin centres, rounded
    assert np.array_equal(completed[:, :3], palette[:, :3])
    samples = igpt.sample_images([4, 9, 4]).numpy()
    assert samples.dtype == np.uint8 and np.array_equal(samples[0], samples[2])
    assert not np.array_equal(samples[0], samples[1])
    assert set(np.unique(samples)) <= {16 * i + 8 for i in range(16)}


def test_probe_points_are_the_blocks():
    assert block_names(vit_encoder((8, 8, 1), 4, 16, 3, 4)) == ["block1", "block2", "block3"]


def test_reports_name_the_network_a_method_builds_not_the_default_encoder():
    from types import SimpleNamespace

    from keras_ssl.run_setup import encoder_label

    config = SimpleNamespace(encoder="small_cnn")  # the image modality's default, which MAE ignores
    assert encoder_label(config, vit_encoder((8, 8, 1), 4, 16, 1, 4)) == "vit"
    assert encoder_label(config, SimpleNamespace(name="small_cnn")) == "small_cnn"


def test_grid_pooling_averages_each_region_of_the_token_grid():
    from keras_ssl.evaluation.layer_probes import block_features, grid_pooling_matrix, token_grid
    from keras_ssl.data.sources import Split

    tokens = np.random.default_rng(0).normal(size=(2, 7, 7, 5))  # [B, h, w, D]
    want = []  # regions of a side of 7 in a 3 x 3 grid: rows/cols 0-2, 2-4, 4-6
    for rows in ((0, 3), (2, 5), (4, 7)):
        for cols in ((0, 3), (2, 5), (4, 7)):
            want.append(tokens[:, rows[0]:rows[1], cols[0]:cols[1]].mean(axis=(1, 2)))
    got = np.einsum("btd,tc->bcd", tokens.reshape(2, 49, 5), grid_pooling_matrix((7, 7)))
    np.testing.assert_allclose(got, np.stack(want, axis=1), rtol=1e-6)
    assert grid_pooling_matrix((14, 14)).sum(axis=0) == pytest.approx(np.ones(9))  # each column a mean
    vit, gpt = vit_encoder((8, 8, 1), 4, 16, 2, 4), pixel_transformer((6, 6, 1), 16, 16, 2, 4)
    assert token_grid(vit) == (2, 2) and token_grid(gpt) == (6, 6)
    images = np.random.default_rng(1).integers(0, 256, (3, 6, 6, 1), dtype=np.uint8)
    features = block_features(gpt, Split(images, np.zeros(3, np.int32)))
    assert features["block2"]["mean"].shape == (3, 16) and features["block2"]["grid"].shape == (3, 9 * 16)
    tokens = keras.Model(gpt.input, gpt.get_layer("block2").output)(images.astype(np.float32) / 255.0)
    grid = np.asarray(tokens, np.float32).reshape(3, 6, 6, 16)  # a side of 6 in 3 x 3 regions: 0-1, 2-3, 4-5
    want = np.concatenate([grid[:, r:r + 2, c:c + 2].mean(axis=(1, 2)) for r in (0, 2, 4) for c in (0, 2, 4)], 1)
    np.testing.assert_allclose(features["block2"]["grid"], want, rtol=1e-4, atol=1e-5)


# -- tiny runs, exported and served without keras -------------------------------------


SERVE = BLOCK_KERAS + textwrap.dedent('''
    import numpy as np, tensorflow as tf
    images, small = np.load(sys.argv[3]), np.load(sys.argv[4])
    mae, igpt = tf.saved_model.load(sys.argv[1]), tf.saved_model.load(sys.argv[2])
    encoded = tf.constant([tf.io.encode_png(image).numpy() for image in images])
    seeds = tf.constant([3, 7, 3], tf.int64)
    out = {"mae_signatures": sorted(mae.signatures), "igpt_signatures": sorted(igpt.signatures)}
    r = mae.signatures["reconstruct"](images=encoded, seeds=seeds)
    out["reconstructed"], out["masked"] = r["images"].numpy().tolist(), r["masked"].numpy().tolist()
    out["embedding"] = mae.signatures["serving_default"](images=encoded)["embedding"].numpy().tolist()
    s = igpt.signatures["sample"](seeds=seeds)["images"]
    out["samples"], out["dtype"] = s.numpy().tolist(), s.dtype.name
    encoded_small = tf.constant([tf.io.encode_png(image).numpy() for image in small])
    out["completed"] = igpt.signatures["complete"](images=encoded_small, seeds=seeds)["images"].numpy().tolist()
    out["keras_loaded"] = "keras" in sys.modules or "keras_ssl" in sys.modules
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`--dataset=digits --image_size=16` (mae) and the native 8x8 digits (igpt: 64 positions) runs,
    trained, exported and served from one process that cannot import keras."""
    from keras_ssl.export import export_saved_model
    from keras_ssl.saving import load_model
    from keras_ssl.training import TrainConfig, train

    root = tmp_path_factory.mktemp("mae_igpt")
    paths, models = {}, {}
    for method, size in (("mae", {"image_size": 16}), ("igpt", {})):  # what keras-ssl-train/-export do
        model_dir = str(root / method)
        train(TrainConfig.from_dict(dict(method=method, dataset="digits", epochs=1, steps_per_epoch=5, batch_size=32,
                                         width_multiplier=0.25, transformer_layers=2, dtype_policy="float32",
                                         model_dir=model_dir, verbose=0, **size)))
        models[method] = load_model(os.path.join(model_dir, "model.keras"))
        shape = load_model(os.path.join(model_dir, "encoder.keras")).input_shape[1:]
        paths[method] = export_saved_model(models[method], str(root / "exports"), method, input_shape=shape,
                                           warmup=False)
    from keras_ssl.data.sources import load_source

    images = load_source("digits", image_size=(16, 16)).test.images[:3]
    small = load_source("digits").test.images[:3]
    np.save(root / "images.npy", images)
    np.save(root / "small.npy", small)
    served = subprocess.run([PY, "-c", SERVE, paths["mae"], paths["igpt"], str(root / "images.npy"),
                             str(root / "small.npy")],
                            capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert served.returncode == 0, served.stderr[-3000:]
    return dict(mae=models["mae"], igpt=models["igpt"], images=images, small=small,
                served=json.loads(served.stdout.strip().splitlines()[-1]))


def test_the_mae_export_reconstructs_with_a_seeded_mask(exported):
    served, model, images = exported["served"], exported["mae"], exported["images"]
    assert not served["keras_loaded"]
    assert {"serving_default", "embed_pixels", "reconstruct"} <= set(served["mae_signatures"])
    reconstructed, masked = np.array(served["reconstructed"]), np.array(served["masked"])
    assert reconstructed.shape == masked.shape == (3, 16, 16, 1)
    combined, masked_in, mask = model.reconstruct_masked(images, np.array([3, 7, 3]))
    np.testing.assert_allclose(reconstructed, np.round(combined.numpy() * 255), atol=1)
    np.testing.assert_allclose(masked, np.round(masked_in.numpy() * 255), atol=1)
    visible = np.repeat(np.repeat(1 - mask.numpy().reshape(3, 4, 4), 4, 1), 4, 2)[..., None] == 1
    assert np.array_equal(reconstructed[visible], images[visible])  # visible patches as given
    assert np.all(masked[~visible] == 128) and np.array_equal(mask[0], mask[2])
    expected = tf.math.l2_normalize(model.predict(images, verbose=0), -1).numpy()
    np.testing.assert_allclose(served["embedding"], expected, atol=1e-5)


def test_the_igpt_export_samples_and_completes(exported):
    served, model = exported["served"], exported["igpt"]
    assert {"serving_default", "embed_pixels", "sample", "complete"} <= set(served["igpt_signatures"])
    samples = np.array(served["samples"])
    assert served["dtype"] == "uint8" and samples.shape == (3, 8, 8, 1)
    assert np.array_equal(samples[0], samples[2])
    assert samples.tolist() == model.sample_images([3, 7, 3]).numpy().tolist()
    completed = np.array(served["completed"])
    palette = (exported["small"].astype(np.int64) * 16 // 256) * 16 + 8
    assert completed.shape == (3, 8, 8, 1) and np.array_equal(completed[:, :4], palette[:, :4])  # the top half kept
