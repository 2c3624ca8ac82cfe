"""Relative-position patch builder (Doersch et al. 2015): geometry, labels, bounds, errors."""


import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.data.pretext import (NEIGHBOURS, PATCH_PRESETS, patch_geometry, relative_position_batches,
                                    relative_position_pairs, save_patch_grid)
from keras_ssl.data.sources import Split
from keras_ssl.errors import UserError


@pytest.mark.parametrize("side, preset", [(28, "small"), (32, "small"), (96, "small"), (224, "imagenet")])
def test_positions_labels_bounds(side, preset):
    pitch, patch, jitter, min_gap = patch_geometry(side, preset)
    # a coordinate image: pixel value encodes (row, col), so a crop tells where it came from
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    coord = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.int32)
    images = np.repeat(coord[None], 400, axis=0)
    centre, neighbour, labels, corners = relative_position_pairs(images, tf.constant([1, 2]), preset,
                                                                 color_drop=False)
    centre, neighbour, labels, corners = (t.numpy() for t in (centre, neighbour, labels, corners))
    assert centre.shape == neighbour.shape == (400, patch, patch, 3)
    assert set(labels) == set(range(8))  # all 8 neighbours, the centre (label for (1,1)) never a target
    offset = (pitch - patch) // 2
    for i in range(400):
        ct, cl, nt, nl = corners[i]
        # the crops are exactly where the corners say
        assert centre[i, 0, 0, 0] == ct and centre[i, 0, 0, 1] == cl
        assert neighbour[i, 0, 0, 0] == nt and neighbour[i, -1, -1, 1] == nl + patch - 1
        # inside the image
        assert 0 <= min(ct, cl, nt, nl) and max(ct, cl, nt, nl) + patch <= side
        # jitter bound around each cell's nominal corner
        r, c = NEIGHBOURS[labels[i]]
        assert abs(ct - (pitch + offset)) <= jitter and abs(cl - (pitch + offset)) <= jitter
        assert abs(nt - (r * pitch + offset)) <= jitter and abs(nl - (c * pitch + offset)) <= jitter
        # the gap holds: patches never touch along the axis where they are neighbours
        if r != 1:
            assert (nt + patch + min_gap <= ct) if r == 0 else (ct + patch + min_gap <= nt)
        if c != 1:
            assert (nl + patch + min_gap <= cl) if c == 0 else (cl + patch + min_gap <= nl)
    if jitter:
        assert len(set(corners[:, 0])) > 1  # jitter actually moves patches


def test_errors_and_color_drop(tmp_path):
    with pytest.raises(UserError, match="too small"):
        patch_geometry(12)
    with pytest.raises(UserError, match="unknown patch preset"):
        patch_geometry(64, "huge")
    with pytest.raises(UserError, match="square"):
        relative_position_batches(Split(np.zeros((4, 28, 32, 1), np.uint8), None), 2)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3)).astype(np.float32) / 255
    centre, _, _, _ = relative_position_pairs(rgb, tf.constant([0, 0]), "small", color_drop=True)
    stds = np.std(centre.numpy(), axis=(1, 2))  # per patch and channel
    assert np.all(np.sum(stds > 0.05, axis=1) == 1)  # one real channel, two near-constant noise
    labels = save_patch_grid((rgb[:3] * 255).astype(np.uint8), str(tmp_path / "patches.png"))
    assert len(labels) == 3 and (tmp_path / "patches.png").stat().st_size > 500
    assert set(PATCH_PRESETS) == {"imagenet", "small"}


def test_batches():
    """The batches' patches are crops of one image each, at the positions their labels name."""
    side, count = 28, 20
    pitch, patch, jitter, _ = patch_geometry(side)
    offset = (pitch - patch) // 2
    # uint8 pixels that say where they are: channel 0 the row, 1 the column, 2 the image
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    images = np.stack([np.stack([rows, cols, np.full_like(rows, 10 * i)], -1) for i in range(count)])
    split = Split(images.astype(np.uint8), None)
    seen_labels, seen_images = [], []
    for (c, n), y in relative_position_batches(split, 8, seed=3, color_drop=False).take(6):
        assert c.shape == n.shape == (8, patch, patch, 3) and y.shape == (8,) and c.dtype == n.dtype == tf.float32
        c, n, y = np.round(c.numpy() * 255).astype(int), np.round(n.numpy() * 255).astype(int), y.numpy()
        for i in range(8):
            image = c[i, 0, 0, 2] // 10
            seen_images.append(image)
            assert np.all(c[i, ..., 2] == 10 * image) and np.all(n[i, ..., 2] == 10 * image)  # one image
            np.testing.assert_array_equal(c[i], images[image, c[i, 0, 0, 0]:c[i, 0, 0, 0] + patch,
                                                       c[i, 0, 0, 1]:c[i, 0, 0, 1] + patch])  # a plain crop
            np.testing.assert_array_equal(n[i], images[image, n[i, 0, 0, 0]:n[i, 0, 0, 0] + patch,
                                                       n[i, 0, 0, 1]:n[i, 0, 0, 1] + patch])
            r, col = NEIGHBOURS[y[i]]  # the label names the neighbour's cell, the centre is in (1, 1)
            assert abs(c[i, 0, 0, 0] - (pitch + offset)) <= jitter and abs(c[i, 0, 0, 1] - (pitch + offset)) <= jitter
            assert abs(n[i, 0, 0, 0] - (r * pitch + offset)) <= jitter, (y[i], n[i, 0, 0, :2])
            assert abs(n[i, 0, 0, 1] - (col * pitch + offset)) <= jitter, (y[i], n[i, 0, 0, :2])
        seen_labels += y.tolist()
    assert set(seen_labels) == set(range(8))  # 48 draws, seed 3: every neighbour
    assert set(seen_images) == set(range(count))  # shuffled epochs cover every image
    again = next(iter(relative_position_batches(split, 8, seed=3, color_drop=False)))
    first = next(iter(relative_position_batches(split, 8, seed=3, color_drop=False)))
    for a, b in zip((*again[0], again[1]), (*first[0], first[1])):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # seeded: the same batches


def test_relative_position_model_learns_and_shares_weights_with_full_images(tmp_path):
    import keras

    from keras_ssl.data import load_source
    from keras_ssl.encoders import small_cnn
    from keras_ssl.models import RelativePosition

    keras.utils.set_random_seed(0)
    digits = load_source("digits", image_size=(32, 32))
    encoder = small_cnn((None, None, 1), width_multiplier=0.5)
    model = RelativePosition(encoder, hidden_dim=64)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    hist = model.fit(relative_position_batches(digits.train, 64), steps_per_epoch=20, epochs=3, verbose=0).history
    assert hist["position_accuracy"][-1] > 0.3  # chance 0.125
    # the same weights embed whole images
    features = model.predict(digits.test.images[:4], verbose=0)
    assert features.shape == (4, int(encoder.output_shape[-1]))
    model.save(tmp_path / "rp.keras")
    loaded = keras.models.load_model(tmp_path / "rp.keras")
    np.testing.assert_allclose(loaded.predict(digits.test.images[:4], verbose=0), features, atol=1e-5)
