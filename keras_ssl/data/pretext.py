"""Pretext-task builders: labels made from the images themselves.

Rotation (RotNet, Gidaris et al. 2018): every image appears in all four
rotations, 0, 90, 180 and 270 degrees counter-clockwise, made with exact
`rot90` (no interpolation); the label is the number of quarter turns.
Non-square images are rotated after a centre crop to a square, so all four
rotations share one shape.
"""

import numpy as np
import tensorflow as tf

from keras_ssl.data.augment import get_preset, simclr_augment, to_float01
from keras_ssl.data.finish import finished
from keras_ssl.errors import UserError


def center_square(images):
    """The centre square of `[B, H, W, C]` images (side min(H, W)): what rotations need."""
    h, w = images.shape[1], images.shape[2]
    if h is None or w is None:
        raise UserError("rotation needs images with a static height and width")
    if h == w:
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[:, top:top + side, left:left + side, :]


def rotate_all(images):
    """`[B, H, W, C]` -> (`[4B, S, S, C]` with rotations k = 0, 1, 2, 3 as four
    consecutive blocks, int32 labels `[4B]` = k). Exact, any dtype."""
    images = center_square(tf.convert_to_tensor(images))
    rotated = [tf.image.rot90(images, k=k) for k in range(4)]
    batch = tf.shape(images)[0]
    labels = tf.repeat(tf.range(4, dtype=tf.int32), batch)
    return tf.concat(rotated, axis=0), labels


def rotation_batches(split, batch_size, seed=0, augment=None, shuffle=True, with_labels=False):
    """Batches of `batch_size` images for `RotationPrediction`, float32 in [0, 1],
    optionally with SimCLR-style augmentation (RotNet used none): `images`, or
    `(images, class_labels)` when `with_labels` and the split is labelled (for
    the model's online probe). The model rotates every image four ways in its
    step (`rotate_all`) and makes the rotation labels itself."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    config = get_preset(augment) if augment is not None else None
    use_labels = with_labels and split.labels is not None
    tensors = (split.images, split.labels.astype(np.int32)) if use_labels else (split.images,)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat().batch(batch_size, drop_remainder=True).enumerate()

    def make(step, element):
        x = to_float01(element[0])
        if config is not None:
            x = simclr_augment(x, tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)]), config)
        return (x, element[1]) if use_labels else x

    return finished(ds.map(make, num_parallel_calls=tf.data.AUTOTUNE))


# --------------------------------------------------------------------------
# Relative patch position (Doersch, Gupta, Efros 2015)
# --------------------------------------------------------------------------

# Sizes relative to the image side: patch side, and the largest jitter of a
# patch from its cell centre. The gap between neighbouring patches is what is
# left of the cell pitch (side / 3) after the patch: at least pitch - patch -
# 2 * jitter. Doersch et al.: 96 px patches, 48 px gaps, jitter up to 7 px on
# images of about 300 px (patch 0.30, gap >= 0.16 of the pitch-free side);
# `small` keeps a 2-3 px gap on 28-32 px images.
PATCH_PRESETS = {
    "imagenet": {"patch": 0.22, "jitter": 0.02},
    "small": {"patch": 0.22, "jitter": 0.04},
}
# Label n in 0..7 -> (row, column) of the neighbour in the 3x3 grid; (1, 1) is the centre.
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def patch_geometry(image_side, preset="small"):
    """`(pitch, patch, jitter, min_gap)` in pixels for a square image side.

    Raises a `UserError` for an unknown preset or an image too small for a
    3x3 grid of non-touching patches of at least 4 px.
    """
    if preset not in PATCH_PRESETS:
        raise UserError(f"unknown patch preset {preset!r}; choose one of {', '.join(PATCH_PRESETS)}")
    pitch = image_side // 3
    patch = max(1, int(round(PATCH_PRESETS[preset]["patch"] * image_side)))
    jitter = int(PATCH_PRESETS[preset]["jitter"] * image_side)
    jitter = min(jitter, max(0, (pitch - patch - 1) // 2))  # keep a gap of >= 1 px
    min_gap = pitch - patch - 2 * jitter
    if patch < 4 or min_gap < 1:
        raise UserError(f"images of {image_side} px are too small for a 3x3 grid of patches with gaps "
                        f"(patch {patch} px, pitch {pitch} px); use images of at least 18 px")
    return pitch, patch, jitter, min_gap


def _patch_corners(rows, cols, pitch, patch, jitter, seed, count):
    """Top-left corners of patches in grid cells (rows, cols), with per-patch jitter."""
    offset = (pitch - patch) // 2
    j = tf.random.stateless_uniform([count, 2], seed, minval=-jitter, maxval=jitter + 1, dtype=tf.int32)
    return rows * pitch + offset + j[:, 0], cols * pitch + offset + j[:, 1]


def _crop(images, top, left, patch):
    """Exact per-image crops `[B, patch, patch, C]` at integer corners."""
    rows = top[:, None] + tf.range(patch)[None, :]
    cols = left[:, None] + tf.range(patch)[None, :]
    x = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def relative_position_pairs(images, seed, preset="small", color_drop=True):
    """Per image, the centre patch and one of its 8 neighbours, and the neighbour's label.

    Returns `(centre [B, P, P, C], neighbour [B, P, P, C], labels [B] in 0..7,
    corners [B, 4] = (centre top, centre left, neighbour top, neighbour left))`.
    Images must be square (`[B, S, S, C]`, centre-crop first otherwise).
    Against the shortcuts Doersch et al. name: gaps between patches, jitter
    of every patch, and for RGB images colour dropping (each patch keeps one
    random channel, the others become Gaussian noise with 1/100 of its std).
    """
    images = tf.convert_to_tensor(images)
    side = images.shape[1]
    if side is None or images.shape[2] != side:
        raise UserError(f"relative position needs square images, got {images.shape[1:3]}")
    pitch, patch, jitter, _ = patch_geometry(side, preset)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    s = tf.random.experimental.stateless_split(seed, 4)
    batch = tf.shape(images)[0]
    labels = tf.random.stateless_uniform([batch], s[0], 0, 8, dtype=tf.int32)
    cells = tf.gather(tf.constant(NEIGHBOURS, tf.int32), labels)
    ones = tf.ones([batch], tf.int32)
    c_top, c_left = _patch_corners(ones, ones, pitch, patch, jitter, s[1], batch)
    n_top, n_left = _patch_corners(cells[:, 0], cells[:, 1], pitch, patch, jitter, s[2], batch)
    centre = _crop(images, c_top, c_left, patch)
    neighbour = _crop(images, n_top, n_left, patch)
    if color_drop and images.shape[-1] == 3:
        centre = _drop_colors(to_float01(centre), tf.random.experimental.stateless_split(s[3], 2)[0])
        neighbour = _drop_colors(to_float01(neighbour), tf.random.experimental.stateless_split(s[3], 2)[1])
    return centre, neighbour, labels, tf.stack([c_top, c_left, n_top, n_left], axis=1)


def _drop_colors(x, seed):
    """Keep one random channel per patch; the others become low-variance noise."""
    s = tf.random.experimental.stateless_split(seed, 2)
    keep = tf.random.stateless_uniform([tf.shape(x)[0]], s[0], 0, 3, dtype=tf.int32)
    mask = tf.one_hot(keep, 3)[:, None, None, :]
    kept = tf.reduce_sum(x * mask, axis=-1, keepdims=True)
    std = tf.math.reduce_std(kept, axis=[1, 2, 3], keepdims=True)
    noise = tf.random.stateless_normal(tf.shape(x), s[1]) * std / 100.0 + 0.5
    return x * mask + noise * (1.0 - mask)


def relative_position_batches(split, batch_size, seed=0, preset="small", color_drop=True):
    """Batches `((centre, neighbour), labels)` float32 in [0, 1], a fresh draw every step."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    h, w = split.images.shape[1:3]
    if h != w:
        raise UserError(f"relative position needs square images, got {h}x{w}; resize with --image_size")
    patch_geometry(h, preset)  # fail early, clearly
    ds = tf.data.Dataset.from_tensor_slices(split.images).shuffle(len(split), seed=seed).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).enumerate()

    def make(step, images):
        centre, neighbour, labels, _ = relative_position_pairs(
            to_float01(images), tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)]), preset,
            color_drop)
        return (centre, neighbour), labels

    return finished(ds.map(make, num_parallel_calls=tf.data.AUTOTUNE))


def save_patch_grid(images, path, preset="small", seed=0, scale=None):
    """The Figure-1 question of Doersch et al. made visible: per row the image
    with the two patch frames, the centre patch, the neighbour patch, and the
    answer (label and position) in the file's row order (labels also returned)."""
    from PIL import Image, ImageDraw

    images = np.asarray(images)
    centre, neighbour, labels, corners = relative_position_pairs(
        tf.constant(images), tf.constant([seed, 0], tf.int64), preset, color_drop=False)
    _, patch, _, _ = patch_geometry(images.shape[1], preset)
    scale = scale or max(1, 96 // images.shape[1])
    rows = []
    for i in range(len(images)):
        img = images[i] if images[i].shape[-1] == 3 else np.repeat(images[i], 3, -1)
        big = Image.fromarray(img.astype(np.uint8)).resize((img.shape[1] * scale, img.shape[0] * scale),
                                                           Image.NEAREST)
        draw = ImageDraw.Draw(big)
        ct, cl, nt, nl = (int(v) * scale for v in corners[i].numpy())
        draw.rectangle([cl, ct, cl + patch * scale - 1, ct + patch * scale - 1], outline=(0, 120, 255))
        draw.rectangle([nl, nt, nl + patch * scale - 1, nt + patch * scale - 1], outline=(255, 60, 0))
        tiles = [np.asarray(big)]
        for p in (centre[i].numpy(), neighbour[i].numpy()):
            p = p if p.shape[-1] == 3 else np.repeat(p, 3, -1)
            tiles.append(np.asarray(Image.fromarray(p.astype(np.uint8)).resize(
                (big.size[0] // 2, big.size[1] // 2), Image.NEAREST)))
        height = tiles[0].shape[0]
        padded = [np.pad(t, ((0, height - t.shape[0]), (4, 4), (0, 0)), constant_values=255) for t in tiles]
        row = np.concatenate(padded, axis=1)
        label_img = Image.new("RGB", (70, height), (255, 255, 255))
        r, c = NEIGHBOURS[int(labels[i])]
        ImageDraw.Draw(label_img).text((4, height // 2 - 6), f"{int(labels[i])}: r{r} c{c}", fill=(0, 0, 0))
        rows.append(np.concatenate([row, np.asarray(label_img)], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return labels.numpy()
