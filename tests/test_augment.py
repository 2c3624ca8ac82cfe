"""SimCLR augmentations: shapes, range, per-image randomness, seeds, presets, the PNG grid."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.data import PRESETS, AugmentConfig, save_view_grid, simclr_augment
from keras_ssl.data.augment import color_jitter, gaussian_blur, random_resized_crop
from keras_ssl.errors import UserError


def _images(shape=(16, 28, 28, 1), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    img[:, : shape[1] // 2] //= 3  # some structure so crops and jitter change values
    return img


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("shape", [(8, 28, 28, 1), (8, 32, 32, 3), (4, 64, 48, 3)])
def test_shape_dtype_range(preset, shape):
    out = simclr_augment(_images(shape), tf.constant([1, 2]), preset)
    assert out.shape == shape and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0


def test_two_views_differ_and_seed_is_deterministic():
    images = _images()
    a = simclr_augment(images, tf.constant([0, 1]), "imagenet").numpy()
    b = simclr_augment(images, tf.constant([0, 2]), "imagenet").numpy()
    a_again = simclr_augment(images, tf.constant([0, 1]), "imagenet").numpy()
    np.testing.assert_array_equal(a, a_again)
    per_image_diff = np.abs(a - b).reshape(len(a), -1).mean(axis=1)
    assert np.all(per_image_diff > 1e-3)


def test_randomness_is_per_image():
    same = np.repeat(_images((1, 32, 32, 3)), 8, axis=0)
    out = simclr_augment(same, tf.constant([3, 4]), "imagenet").numpy()
    distinct = {out[i].tobytes() for i in range(8)}
    assert len(distinct) == 8


def test_uint8_and_float_inputs_agree():
    images = _images((4, 32, 32, 3))
    seed = tf.constant([5, 6])
    a = simclr_augment(images, seed, "cifar")
    b = simclr_augment(images.astype(np.float32) / 255.0, seed, "cifar")
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_random_resized_crop_area_bounds():
    # A ramp image: a crop's value range tells its extent.
    ramp = np.tile(np.linspace(0, 1, 100, dtype=np.float32)[None, :, None, None], (256, 1, 100, 1))
    ramp = np.transpose(ramp, (0, 2, 1, 3))  # varies along x
    out = random_resized_crop(tf.constant(ramp), tf.constant([0, 0], tf.int64), area=(0.08, 1.0)).numpy()
    widths = out[:, 0, -1, 0] - out[:, 0, 0, 0]
    # width fraction = sqrt(area * ratio) within [sqrt(0.08 * 3/4), 1] (within resampling error)
    assert widths.min() >= np.sqrt(0.08 * 0.75) - 0.02 and widths.max() <= 1.0 + 1e-6
    full = random_resized_crop(tf.constant(ramp), tf.constant([0, 0], tf.int64), area=(1.0, 1.0),
                               aspect=(1.0, 1.0)).numpy()
    np.testing.assert_allclose(full, ramp, atol=1e-5)


def test_color_jitter_is_identity_at_zero_strength_and_changes_at_one():
    x = tf.constant(_images((8, 16, 16, 3)), tf.float32) / 255.0
    np.testing.assert_allclose(color_jitter(x, tf.constant([1, 1], tf.int64), 0.0, 1.0).numpy(), x.numpy(),
                               atol=1e-5)
    changed = color_jitter(x, tf.constant([1, 1], tf.int64), 1.0, 1.0).numpy()
    assert np.all(np.abs(changed - x.numpy()).reshape(8, -1).mean(1) > 1e-3)


def test_blur_keeps_constant_images_and_smooths_noise():
    const = tf.fill([4, 32, 32, 3], 0.3)
    np.testing.assert_allclose(gaussian_blur(const, tf.constant([0, 0], tf.int64), prob=1.0).numpy(), 0.3,
                               atol=1e-6)
    noise = tf.constant(_images((4, 32, 32, 1)), tf.float32) / 255.0
    blurred = gaussian_blur(noise, tf.constant([0, 0], tf.int64), sigma=(1.5, 2.0), prob=1.0)
    assert float(tf.math.reduce_std(blurred)) < 0.8 * float(tf.math.reduce_std(noise))


def test_bad_configs_are_clear_errors():
    with pytest.raises(UserError, match="crop_area"):
        AugmentConfig(crop_area=(0.5, 0.2))
    with pytest.raises(UserError, match="blur_prob"):
        AugmentConfig(blur_prob=1.5)
    with pytest.raises(UserError, match="unknown augmentation preset"):
        simclr_augment(_images(), tf.constant([0, 0]), "imagnet")
    with pytest.raises(UserError, match="images"):
        simclr_augment(np.zeros((4, 28, 28, 2), np.uint8), tf.constant([0, 0]), "cifar")


def test_view_grid_png(tmp_path):
    from PIL import Image

    path = save_view_grid(_images((3, 28, 28, 1)), str(tmp_path / "views.png"), "fashion_mnist", n_views=4)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 0
