"""Rotation pretext task: exact rotations and labels; the model learns; 2 replicas."""

import keras
import numpy as np
import pytest

from keras_ssl.data import load_source
from keras_ssl.data.pretext import rotate_all, rotation_batches
from keras_ssl.encoders import small_cnn
from keras_ssl.errors import UserError
from keras_ssl.models import RelativePosition, RotationPrediction


def test_four_exact_rotations_and_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    rotated, labels = rotate_all(images)
    rotated, labels = rotated.numpy(), labels.numpy()
    assert rotated.shape == (20, 6, 6, 3) and rotated.dtype == np.uint8
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    for i in range(20):
        k = labels[i]
        # rotating back by k quarter turns gives the original exactly
        back = np.rot90(rotated[i], k=-k, axes=(0, 1))
        np.testing.assert_array_equal(back, images[i % 5])
    np.testing.assert_array_equal(rotated[5], np.rot90(images[0], 1, axes=(0, 1)))


def test_non_square_images_are_center_cropped():
    rotated, _ = rotate_all(np.zeros((2, 8, 6, 1), np.float32))
    assert rotated.shape == (8, 6, 6, 1)


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


def test_rotation_model_learns(digits, tmp_path):
    keras.utils.set_random_seed(0)
    model = RotationPrediction(small_cnn((8, 8, 1), width_multiplier=0.5), hidden_dim=32, num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    hist = model.fit(digits.train.images, digits.train.labels, batch_size=64, epochs=4, verbose=0).history
    assert hist["rotation_accuracy"][-1] > 0.6  # chance: 0.25
    assert hist["probe_accuracy"][-1] > 0.3  # the online probe of the classes; chance: 0.1
    x, y = rotate_all(digits.test.images[:32].astype(np.float32) / 255.0)
    probs = model.rotation_probabilities(x).numpy()
    assert probs.shape == (128, 4) and np.mean(probs.argmax(1) == y.numpy()) > 0.5
    model.save(tmp_path / "rot.keras")
    loaded = keras.models.load_model(tmp_path / "rot.keras")
    np.testing.assert_allclose(loaded.rotation_probabilities(x).numpy(), probs, atol=1e-5)
    np.testing.assert_allclose(loaded.class_probabilities(x[:32]).numpy(), model.class_probabilities(x[:32]).numpy(),
                               atol=1e-5)
    assert loaded.num_classes == 10 and {e.name for e in loaded.serving_endpoints((8, 8, 1))} >= {"rotation",
                                                                                                  "classify"}


def test_class_labels_are_never_read_as_rotations(digits):
    # fit(x, class_labels) used to train on the class ids as rotation targets (or fail on a
    # "label value of 9 ... [0, 4)" error): without a probe they are refused.
    model = RotationPrediction(small_cnn((8, 8, 1), width_multiplier=0.25), hidden_dim=0)
    model.compile(optimizer="adam")
    with pytest.raises(UserError, match="makes its own rotation labels; labels y given to fit"):
        model.fit(digits.train.images[:32], digits.train.labels[:32], batch_size=16, epochs=1, verbose=0)
    with pytest.raises(UserError, match="do not use sample_weight or class_weight"):
        model.fit(digits.train.images[:32], sample_weight=np.ones(32), batch_size=16, epochs=1, verbose=0)
    with pytest.raises(UserError, match="RelativePosition has no online probe"):
        RelativePosition(small_cnn((None, None, 1), width_multiplier=0.25), num_classes=10)
    batch = next(iter(rotation_batches(digits.train, 16, with_labels=True)))
    assert batch[0].shape == (16, 8, 8, 1) and batch[1].shape == (16,)
    assert next(iter(rotation_batches(digits.train, 16))).shape == (16, 8, 8, 1)


# One device vs two replicas (rotations made per replica, the probe on each replica's unrotated
# block) is test_distributed_methods.py's, which trains rotation with its online probe on digits.
