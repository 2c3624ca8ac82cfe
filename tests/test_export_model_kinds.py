"""Export of model kinds the binaries' tests do not reach, and the pretext heads' wiring."""

import json
import os

import numpy as np
import tensorflow as tf

from keras_ssl.encoders import small_cnn
from keras_ssl.export import export_saved_model
from keras_ssl.layers import FusedBatchNormalization
from keras_ssl.models import OnlineTriplet, RelativePosition, RotationPrediction, SimCLR


def _facts(path):
    with open(os.path.join(path, "assets.extra", "preprocessing.json")) as f:
        return json.load(f)


def test_simclr_without_probe_exports_its_encoder(tmp_path):
    # An unlabelled run (no online probe) is SimCLR's main use; it used to fail with
    # AttributeError: 'SimCLR' object has no attribute 'input_shape'.
    encoder = small_cnn((12, 12, 1), width_multiplier=0.25)
    model = SimCLR(encoder, augment="fashion_mnist")
    assert model.probe is None
    path = export_saved_model(model, str(tmp_path), "simclr", warmup=False)
    loaded = tf.saved_model.load(path)
    assert "classify" not in loaded.signatures
    pixels = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 1), dtype=np.uint8)
    served = loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))["embedding"].numpy()
    expected = tf.math.l2_normalize(encoder(pixels.astype("float32") / 255.0, training=False), axis=-1)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert _facts(path)["embedding_dim"] == int(encoder.output_shape[-1])


def test_triplet_without_threshold_records_its_embedding_width(tmp_path):
    # Used to record the encoder's width (32 here) instead of the embedding head's 16.
    model = OnlineTriplet(small_cnn((12, 12, 1), width_multiplier=0.25), embedding_dim=16)
    path = export_saved_model(model, str(tmp_path), "triplet", warmup=False)
    assert _facts(path)["embedding_dim"] == 16
    loaded = tf.saved_model.load(path)
    assert "verify" not in loaded.signatures
    empty = loaded.signatures["embed_pixels"](pixels=tf.zeros([0, 12, 12, 1], tf.uint8))["embedding"]
    assert empty.shape == (0, 16)
    one = loaded.signatures["embed_pixels"](pixels=tf.zeros([1, 12, 12, 1], tf.uint8))["embedding"]
    assert one.shape == (1, 16)


def test_pretext_heads_are_named_and_not_synchronised_on_one_device():
    # The head's name used to land in mlp_classifier's sync_bn argument: every head was
    # built with synchronised BN and named classifier_head.
    encoder = small_cnn((12, 12, 1), width_multiplier=0.25)
    for model, name in ((RotationPrediction(encoder), "rotation_head"),
                        (RelativePosition(small_cnn((None, None, 1), width_multiplier=0.25), patch_size=8),
                         "position_head")):
        assert model.head.name == name
        norms = [layer for layer in model.head.layers if isinstance(layer, FusedBatchNormalization)]
        assert norms and not any(layer.synchronized for layer in norms)


def test_a_given_threshold_adds_verify_to_a_triplet_model(tmp_path):
    model = OnlineTriplet(small_cnn((12, 12, 1), width_multiplier=0.25), embedding_dim=16)
    path = export_saved_model(model, str(tmp_path), "triplet", threshold=0.9, warmup=False)
    assert _facts(path)["threshold"] == 0.9
    loaded = tf.saved_model.load(path)
    png = tf.io.encode_png(tf.zeros([12, 12, 1], tf.uint8))
    out = loaded.signatures["verify"](images_a=tf.stack([png]), images_b=tf.stack([png]))
    assert out["distance"].numpy()[0] < 1e-3 and bool(out["same"].numpy()[0])


def test_what_a_killed_export_left_is_cleaned_or_restored(tmp_path):
    model = small_cnn((12, 12, 1), width_multiplier=0.25)
    root = tmp_path / "m"
    first = export_saved_model(model, str(tmp_path), "m", warmup=False)
    dead = 2 ** 22 + 12345  # above Linux's default pid_max: never a live process
    os.rename(first, root / f".old-1-{dead}")  # killed between the two renames of an overwrite
    os.makedirs(root / f".tmp-1-{dead}" / "variables")  # and its half-written new version
    os.makedirs(root / f".tmp-7-{os.getpid()}")  # a live export's folder is left alone
    second = export_saved_model(model, str(tmp_path), "m", warmup=False)
    assert sorted(os.listdir(root)) == [f".tmp-7-{os.getpid()}", "1", "2"]
    assert second.endswith("2") and tf.saved_model.load(first).signatures["serving_default"] is not None


def test_a_reading_of_the_encoder_is_served_as_the_embedding(tmp_path):
    """`reading="block2:grid2"` (the demo exports block2:grid3): `serving_default` and `embed_pixels`
    return that reading, L2-normalised, and say so in preprocessing.json; the online probe's
    `classify` is untouched; an unknown block and a model with `verify` are refused in one line."""
    import pytest

    from keras_ssl.errors import UserError
    from keras_ssl.evaluation import feature_model

    encoder = small_cnn((12, 12, 1), width_multiplier=0.25)  # block2: 6x6x16
    model = SimCLR(encoder, augment="fashion_mnist", num_classes=3)
    path = export_saved_model(model, str(tmp_path), "simclr", warmup=False, reading="block2:grid2")
    loaded = tf.saved_model.load(path)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 1), dtype=np.uint8)
    served = loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))["embedding"].numpy()
    reading = feature_model(encoder, "block2:grid2")(pixels.astype("float32") / 255.0, training=False)
    np.testing.assert_allclose(served, tf.math.l2_normalize(reading, axis=-1).numpy(), atol=1e-5)
    assert served.shape == (3, 4 * 16)
    assert {k: _facts(path)[k] for k in ("embedding_dim", "reading")} == {"embedding_dim": 64, "reading": "block2:grid2"}
    assert loaded.signatures["classify"](images=tf.constant([tf.io.encode_png(pixels[0]).numpy()]))[
        "probabilities"].shape == (1, 3)
    assert _facts(export_saved_model(model, str(tmp_path), "plain", warmup=False))["reading"] == "representation"
    with pytest.raises(UserError, match="no layer 'block9'"):
        export_saved_model(model, str(tmp_path), "bad", warmup=False, reading="block9:grid2")
    siamese_like = OnlineTriplet(small_cnn((12, 12, 1), width_multiplier=0.25), embedding_dim=16)
    siamese_like.threshold = 0.5
    with pytest.raises(UserError, match="verify signature"):
        export_saved_model(siamese_like, str(tmp_path), "triplet", warmup=False, threshold=0.5, reading="block2")
