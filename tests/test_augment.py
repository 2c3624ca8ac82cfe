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


# --------------------------------------------------------------------------
# The documented defaults, pinned, and the rate of every random choice
# --------------------------------------------------------------------------

# SimCLR's (Chen et al. 2020, Appendix A; the module docstring) and the presets' documented fields.
DOCUMENTED = {
    "imagenet": dict(crop_area=(0.08, 1.0), crop_aspect=(3 / 4, 4 / 3), flip_prob=0.5, jitter_prob=0.8,
                     jitter_strength=1.0, grayscale_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 2.0)),
    "cifar": dict(crop_area=(0.08, 1.0), crop_aspect=(3 / 4, 4 / 3), flip_prob=0.5, jitter_prob=0.8,
                  jitter_strength=0.5, grayscale_prob=0.2, blur_prob=0.0, blur_sigma=(0.1, 2.0)),
    "fashion_mnist": dict(crop_area=(0.2, 1.0), crop_aspect=(3 / 4, 4 / 3), flip_prob=0.5, jitter_prob=0.8,
                          jitter_strength=0.5, grayscale_prob=0.2, blur_prob=0.0, blur_sigma=(0.1, 2.0)),
    "weak": dict(crop_area=(0.75, 1.0), crop_aspect=(1 / 1.1, 1.1), flip_prob=0.5, jitter_prob=0.0,
                 jitter_strength=1.0, grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0)),
}


def _same_fields(got, expected):
    """The dicts have the same keys and (to 1e-9) the same numbers, tuples included."""
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    return all(np.allclose(got[k], expected[k], rtol=0, atol=1e-9) for k in expected)


def test_defaults_and_presets_are_the_documented_ones():
    import dataclasses
    import inspect

    assert _same_fields(dataclasses.asdict(AugmentConfig()), DOCUMENTED["imagenet"]), AugmentConfig()
    assert set(PRESETS) == set(DOCUMENTED)
    for name, fields in DOCUMENTED.items():
        assert _same_fields(dataclasses.asdict(PRESETS[name]), fields), (name, PRESETS[name])
    # the ops' own defaults are SimCLR's too
    defaults = lambda f: {k: p.default for k, p in inspect.signature(f).parameters.items()
                          if p.default is not inspect.Parameter.empty}
    assert _same_fields(defaults(random_resized_crop), dict(area=(0.08, 1.0), aspect=(3 / 4, 4 / 3), tries=10))
    assert _same_fields(defaults(color_jitter), dict(strength=1.0, prob=0.8))
    assert _same_fields(defaults(gaussian_blur), dict(sigma=(0.1, 2.0), prob=0.5))
    assert inspect.signature(simclr_augment).parameters["config"].default is PRESETS["imagenet"]


def _only(config, **kept):
    """`config` with every random op off (the crop: the whole image) except the fields in `kept`."""
    import dataclasses

    off = dict(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
               blur_prob=0.0)
    off.update(kept)
    return dataclasses.replace(config, **off)


RATE_IMAGES, RATE_SEED, RATE_TOLERANCE = 4000, 1234, 0.05  # the rate's std: <= sqrt(0.25 / 4000) = 0.008


def _applied_rate(config, images, applied):
    out = simclr_augment(images, tf.constant([RATE_SEED, 0], tf.int64), config).numpy()
    return float(np.mean(applied(out, to_float(images))))


def to_float(images):
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


@pytest.mark.parametrize("preset", list(PRESETS))
def test_flip_rate_is_the_presets(preset):
    """Half the images flipped (p = 0.5): 0.5 +- 0.05 over 4,000 images, and a flip is an exact mirror."""
    ramp = np.tile(np.linspace(0.1, 0.9, 12, dtype=np.float32)[None, None, :, None], (RATE_IMAGES, 12, 1, 1))
    config = _only(PRESETS[preset], flip_prob=PRESETS[preset].flip_prob)
    out = simclr_augment(ramp, tf.constant([RATE_SEED, 0], tf.int64), config).numpy()
    flipped = out[:, 0, 0, 0] > out[:, 0, -1, 0]
    np.testing.assert_allclose(out[flipped], ramp[flipped][:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(out[~flipped], ramp[~flipped], atol=1e-5)
    assert abs(flipped.mean() - 0.5) < RATE_TOLERANCE, (preset, flipped.mean(), f"seed {RATE_SEED}")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_grayscale_jitter_and_blur_rates_are_the_presets(preset):
    config = PRESETS[preset]
    small = _images((RATE_IMAGES, 4, 4, 3), seed=RATE_SEED)
    gray = _applied_rate(_only(config, grayscale_prob=config.grayscale_prob), small,
                         lambda out, x: np.all(out[..., :1] == out, axis=(1, 2, 3)))
    changed = lambda out, x: np.abs(out - x).max(axis=(1, 2, 3)) > 1e-5
    jitter = _applied_rate(_only(config, jitter_prob=config.jitter_prob), small, changed)
    blur = _applied_rate(_only(config, blur_prob=config.blur_prob), _images((RATE_IMAGES, 20, 20, 1), RATE_SEED),
                         changed)  # 20 px: the smallest side with a 3-tap kernel
    documented = DOCUMENTED[preset]
    for name, rate, expected in (("grayscale", gray, documented["grayscale_prob"]),
                                 ("jitter", jitter, documented["jitter_prob"]), ("blur", blur, documented["blur_prob"])):
        assert abs(rate - expected) < RATE_TOLERANCE, (preset, name, rate, expected, f"seed {RATE_SEED}")


def _np_crop_areas(n, area, aspect, tries, rng, side):
    """The crop rule of the module docstring in NumPy: area fraction U(area), log-uniform aspect,
    the first of `tries` draws that fits, else the whole image."""
    a = rng.uniform(*area, size=(n, tries)) * side * side
    r = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), size=(n, tries)))
    w, h = np.sqrt(a * r), np.sqrt(a / r)
    fits = (w <= side) & (h <= side)
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    w = np.where(fits.any(1), w[rows, first], side)
    h = np.where(fits.any(1), h[rows, first], side)
    return w * h / side ** 2


def test_default_crop_area_distribution_matches_the_rule():
    """The default config's crops cover SimCLR's area range, down to 8% of the image, with the
    distribution of a NumPy simulation of the rule (quantiles within 0.03 over 4,000 crops)."""
    side = 32
    axis = np.linspace(0, 1, side, dtype=np.float32)
    coords = np.stack(list(np.meshgrid(axis, axis, indexing="xy")) + [np.zeros((side, side), np.float32)], -1)
    config = AugmentConfig()
    out = simclr_augment(np.repeat(coords[None], RATE_IMAGES, 0), tf.constant([RATE_SEED, 0], tf.int64),
                         _only(config, crop_area=config.crop_area, crop_aspect=config.crop_aspect)).numpy()
    # crop_and_resize maps the crop's first and last pixel to the output's corners (exact on a ramp)
    w = (out[:, 0, -1, 0] - out[:, 0, 0, 0]) * (side - 1) + 1
    h = (out[:, -1, 0, 1] - out[:, 0, 0, 1]) * (side - 1) + 1
    areas = w * h / side ** 2
    msg = f"seed {RATE_SEED}"
    assert 0.08 - 1e-3 <= areas.min() < 0.09 and 0.95 < areas.max() <= 1.0 + 1e-4, (areas.min(), areas.max(), msg)
    assert np.all((w / h > 0.75 - 1e-3) & (w / h < 4 / 3 + 1e-3)), msg
    reference = _np_crop_areas(100_000, (0.08, 1.0), (3 / 4, 4 / 3), 10, np.random.default_rng(RATE_SEED), side)
    q = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9]
    np.testing.assert_allclose(np.quantile(areas, q), np.quantile(reference, q), atol=0.03, err_msg=msg)
