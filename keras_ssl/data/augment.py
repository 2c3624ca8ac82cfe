"""SimCLR's augmentations as vectorised, per-image-random, seeded batch ops.

`simclr_augment(images, seed, config)` takes a batch `[B, H, W, C]` (uint8 in
[0, 255] or float in [0, 1]) and returns float32 views in [0, 1] of the same
size. Every random choice is drawn per image (Keras's own `RandomCrop` and
`RandomGaussianBlur` draw one per batch, and `factor=1.0` blurs only about
half the images) from stateless ops
keyed by `seed`, so the same seed gives the same views anywhere, in any
`tf.data` worker or replica. Batch ops (crop_and_resize with per-image boxes,
broadcast jitter, one depthwise conv for per-image blur kernels) were faster
than a per-image `map` on a 2-core machine of this project, in one run (the
CPU kind was not recorded; two views, batch 256 of 32x32x3:
2.6-6.6k images/s against 2.2-3.1k for a per-image `tf.image` map and
1.1-1.9k for Keras's preprocessing layers).

The operations and their defaults are SimCLR's (Chen et al. 2020, Appendix A;
the reference `data_util.py`):

1. random resized crop, area fraction U(0.08, 1.0), aspect ratio
   log-uniform in (3/4, 4/3), resized back to H x W (bilinear); up to 10
   draws per image, the whole image when none fits (torchvision's rule);
2. horizontal flip with p = 0.5;
3. colour jitter with p = 0.8 and strength s: brightness, contrast and
   saturation factors U(1 - 0.8s, 1 + 0.8s), hue shift U(-0.2s, 0.2s), the
   four applied in a random order per image, values clipped to [0, 1] after
   each (torchvision's `ColorJitter` semantics);
4. grayscale with p = 0.2;
5. Gaussian blur with p = 0.5, sigma U(0.1, 2.0), kernel side
   `2 * (H // 10 // 2) + 1` (10% of the side, odd), reflect padding.

On 1-channel images saturation, hue and grayscale are identities.
"""

import dataclasses
import math

import tensorflow as tf

from keras_ssl.errors import UserError

_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R 601-2 luma, as tf.image.rgb_to_grayscale


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Parameters of `simclr_augment`; defaults are SimCLR's ImageNet ones."""

    crop_area: tuple = (0.08, 1.0)
    crop_aspect: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    jitter_strength: float = 1.0
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)

    def __post_init__(self):
        lo, hi = self.crop_area
        if not 0.0 < lo <= hi <= 1.0:
            raise UserError(f"crop_area must satisfy 0 < min <= max <= 1, got {self.crop_area}")
        if not 0.0 < self.crop_aspect[0] <= self.crop_aspect[1]:
            raise UserError(f"crop_aspect must satisfy 0 < min <= max, got {self.crop_aspect}")
        for field in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{field} must be a probability in [0, 1], got {value}")
        if self.jitter_strength < 0:
            raise UserError(f"jitter_strength must be >= 0, got {self.jitter_strength}")


PRESETS = {
    # SimCLR on ImageNet: s = 1 with blur.
    "imagenet": AugmentConfig(),
    # SimCLR on CIFAR-10 (Appendix B.9): s = 0.5, no blur.
    "cifar": AugmentConfig(jitter_strength=0.5, blur_prob=0.0),
    # Ours for 28 px grayscale (Fashion-MNIST). Colour jitter reduces to
    # brightness and contrast, so s = 0.5 as for CIFAR. The crop keeps at least
    # 20% of the area: at 28 px a 0.08 crop is an 8x8 px piece of a garment, too
    # little to tell classes apart. Measured (docs/BENCHMARKS.md, one seed, one
    # epoch of the demo run): kNN 82.90% with area >= 0.2 vs 82.10% with the
    # paper's 0.08. No blur, as SimCLR's CIFAR setting: at 28 px the 3x3 kernel
    # with sigma up to 2 wipes the fine texture that separates shirts from
    # pullovers and coats (not measured separately).
    "fashion_mnist": AugmentConfig(crop_area=(0.2, 1.0), jitter_strength=0.5, blur_prob=0.0),
    # Weak, for metric learning with labels (triplets, Siamese pairs), where the views of a
    # class come from different images and the augmentation only has to keep the network
    # from memorising pixels: a horizontal flip and a crop of 75-100% of the area at an
    # aspect within 10% of the image's, resized back (at 28 px: shifts of up to about 2 px
    # and zooms of up to about 1.15x), no colour change. Ours, after the "flip and +-2 px
    # shifts" of metric-learning recipes on small images.
    "weak": AugmentConfig(crop_area=(0.75, 1.0), crop_aspect=(1 / 1.1, 1.1), jitter_prob=0.0, grayscale_prob=0.0,
                          blur_prob=0.0),
}


def get_preset(name):
    """An `AugmentConfig` by preset name (`imagenet`, `cifar`, `fashion_mnist`, `weak`)."""
    if isinstance(name, AugmentConfig):
        return name
    if name not in PRESETS:
        raise UserError(f"unknown augmentation preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def to_float01(images):
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken as already in [0, 1]."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def _uniform(shape, seed, lo, hi):
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.float32)


def _bernoulli(batch, seed, p):
    return tf.random.stateless_uniform([batch], seed) < p


def _where_images(mask, a, b):
    return tf.where(mask[:, None, None, None], a, b)


def _grayscale(x):
    if x.shape[-1] == 1:
        return x
    w = tf.constant(_GRAY_WEIGHTS, tf.float32)
    return tf.reduce_sum(x * w, axis=-1, keepdims=True)


def random_resized_crop(images, seed, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3), tries=10):
    """Per-image random resized crop back to the input size; see module doc."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    s = tf.random.experimental.stateless_split(seed, 4)
    target = _uniform([batch, tries], s[0], area[0], area[1]) * h_f * w_f
    ratio = tf.exp(_uniform([batch, tries], s[1], math.log(aspect[0]), math.log(aspect[1])))
    crop_w = tf.sqrt(target * ratio)
    crop_h = tf.sqrt(target / ratio)
    fits = (crop_w <= w_f) & (crop_h <= h_f)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)
    pick = lambda t: tf.gather(t, first, batch_dims=1)
    crop_h = tf.where(any_fit, pick(crop_h), h_f)
    crop_w = tf.where(any_fit, pick(crop_w), w_f)
    y0 = _uniform([batch], s[2], 0.0, 1.0) * (h_f - crop_h)
    x0 = _uniform([batch], s[3], 0.0, 1.0) * (w_f - crop_w)
    # crop_and_resize maps normalised y to y * (H - 1); pixel rows y0 .. y0+h-1.
    dy, dx = tf.maximum(h_f - 1.0, 1.0), tf.maximum(w_f - 1.0, 1.0)
    boxes = tf.stack([y0 / dy, x0 / dx, (y0 + crop_h - 1.0) / dy, (x0 + crop_w - 1.0) / dx], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), tf.stack([height, width]))


def _adjust_hue(x, delta):
    hsv = tf.image.rgb_to_hsv(x)
    hue = tf.math.floormod(hsv[..., :1] + delta[:, None, None, None], 1.0)
    return tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))


def color_jitter(images, seed, strength=1.0, prob=0.8):
    """Per-image colour jitter in a random order per image; see module doc."""
    batch = tf.shape(images)[0]
    rgb = images.shape[-1] == 3
    s = tf.random.experimental.stateless_split(seed, 6)
    lo = max(0.0, 1.0 - 0.8 * strength)
    hi = 1.0 + 0.8 * strength
    bright = _uniform([batch], s[0], lo, hi)[:, None, None, None]
    contrast = _uniform([batch], s[1], lo, hi)[:, None, None, None]
    saturation = _uniform([batch], s[2], lo, hi)[:, None, None, None]
    hue = _uniform([batch], s[3], -0.2 * strength, 0.2 * strength)

    def op(index, x):
        if index == 0:
            return tf.clip_by_value(x * bright, 0.0, 1.0)
        if index == 1:
            mean = tf.reduce_mean(_grayscale(x), axis=[1, 2, 3], keepdims=True)
            return tf.clip_by_value((x - mean) * contrast + mean, 0.0, 1.0)
        if index == 2:
            gray = _grayscale(x)
            return tf.clip_by_value(gray + (x - gray) * saturation, 0.0, 1.0)
        return tf.clip_by_value(_adjust_hue(x, hue), 0.0, 1.0)

    n_ops = 4 if rgb else 2  # saturation and hue are identities on grayscale
    order = tf.argsort(tf.random.stateless_uniform([batch, n_ops], s[4]), axis=1)
    x = images
    for step in range(n_ops):
        out = x
        for index in range(n_ops):
            out = _where_images(tf.equal(order[:, step], index), op(index, x), out)
        x = out
    return _where_images(_bernoulli(batch, s[5], prob), x, images)


def gaussian_blur(images, seed, sigma=(0.1, 2.0), prob=0.5):
    """Per-image Gaussian blur, kernel side 2 * (H // 10 // 2) + 1; see module doc."""
    height = images.shape[1]
    if height is None:
        raise UserError("gaussian_blur needs a static image height")
    radius = height // 10 // 2
    if radius == 0:
        return images
    batch, channels = tf.shape(images)[0], images.shape[-1]
    s = tf.random.experimental.stateless_split(seed, 2)
    sig = _uniform([batch], s[0], sigma[0], sigma[1])
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-tf.square(taps)[None, :] / (2.0 * tf.square(sig)[:, None]))
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [B, k]
    # One depthwise conv: batch folded into channels, one kernel per (image, channel).
    k_bc = tf.repeat(tf.transpose(kernel), channels, axis=1)  # [k, B*C]
    x = tf.transpose(images, [1, 2, 0, 3])
    x = tf.reshape(x, [1, tf.shape(images)[1], tf.shape(images)[2], -1])
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.nn.depthwise_conv2d(x, tf.reshape(k_bc, [-1, 1, batch * channels, 1]), [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, tf.reshape(k_bc, [1, -1, batch * channels, 1]), [1, 1, 1, 1], "VALID")
    x = tf.reshape(x, [tf.shape(images)[1], tf.shape(images)[2], batch, channels])
    blurred = tf.transpose(x, [2, 0, 1, 3])
    return _where_images(_bernoulli(batch, s[1], prob), blurred, images)


def simclr_augment(images, seed, config=PRESETS["imagenet"]):
    """One random SimCLR view of each image of a batch; see the module doc.

    Args:
      images: `[B, H, W, C]`, uint8 in [0, 255] or float in [0, 1], C in {1, 3}.
      seed: int32/int64 `[2]` tensor (stateless-op seed).
      config: an `AugmentConfig` or a preset name.
    Returns:
      float32 `[B, H, W, C]` in [0, 1].
    """
    config = get_preset(config)
    images = to_float01(images)
    if images.shape.rank != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"augment expects images [batch, H, W, 1 or 3], got shape {images.shape}")
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    s = tf.random.experimental.stateless_split(seed, 6)
    batch = tf.shape(images)[0]
    x = random_resized_crop(images, s[0], config.crop_area, config.crop_aspect)
    if config.flip_prob > 0:
        x = _where_images(_bernoulli(batch, s[1], config.flip_prob), tf.reverse(x, axis=[2]), x)
    if config.jitter_prob > 0 and config.jitter_strength > 0:
        x = color_jitter(x, s[2], config.jitter_strength, config.jitter_prob)
    if config.grayscale_prob > 0 and x.shape[-1] == 3:
        gray = tf.repeat(_grayscale(x), 3, axis=-1)
        x = _where_images(_bernoulli(batch, s[3], config.grayscale_prob), gray, x)
    if config.blur_prob > 0:
        x = gaussian_blur(x, s[4], config.blur_sigma, config.blur_prob)
    return tf.clip_by_value(x, 0.0, 1.0)
