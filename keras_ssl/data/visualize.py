"""PNG grids of views, so a user can see what the augmentations do."""

import numpy as np
import tensorflow as tf

from keras_ssl.data.augment import simclr_augment, to_float01


def _tile(rows, scale):
    """rows: list of lists of float [H, W, C] in [0, 1] -> uint8 RGB grid."""
    h, w = rows[0][0].shape[:2]
    pad = 2
    grid = np.ones((len(rows) * (h + pad) + pad, len(rows[0]) * (w + pad) + pad, 3), np.float32)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y:y + h, x:x + w] = img
    grid = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    return np.kron(grid, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else grid


def save_view_grid(images, path, augment="imagenet", n_views=4, seed=0, scale=None):
    """Saves a PNG: one row per image, the original then `n_views` SimCLR views.

    `scale` enlarges small images (default: to about 96 px per tile).
    """
    from PIL import Image

    images = to_float01(tf.convert_to_tensor(images))
    views = [simclr_augment(images, tf.constant([seed, v], tf.int64), augment).numpy()
             for v in range(n_views)]
    originals = images.numpy()
    rows = [[originals[i]] + [v[i] for v in views] for i in range(originals.shape[0])]
    scale = scale or max(1, 96 // originals.shape[1])
    Image.fromarray(_tile(rows, scale)).save(path)
    return path
