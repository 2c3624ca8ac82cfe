"""Evaluations of generative image models: likelihood bounds, reconstructions, samples.

Each reads only what the model exposes, so any generative model that has the
methods can declare it (`keras_ssl.evaluation.method_evaluations`):

    likelihood       negative_elbo(images, seed) -> nats [B];
                     importance_weighted_nll(images, k, seed) -> nats [B]
    reconstruction   reconstruct(images) -> float [B, H, W, C] in [0, 1]
    samples          sample_images(seeds) -> uint8 [B, H, W, C]; with
                     latent_activity(images) -> [D] and traverse(image, dimensions, values)
                     -> uint8 [rows, values, H, W, C] also a latent traversal

Images are the dataset's uint8 test images.
"""

import math
import os

import numpy as np

# k of the importance-weighted bound: Burda et al. 2016 (sec. 5) evaluate with k = 5000; 100
# keeps the bound within CPU minutes (it tightens as k grows, so it is a looser upper bound).
IWAE_SAMPLES = 100
# Decoded images per call of the importance-weighted bound (k * images), bounding memory.
IWAE_DECODES_PER_CALL = 2000
SAMPLE_SEEDS = tuple(range(64))
# The traversal: the most active latent dimensions, each from -3 to 3 prior standard
# deviations (Higgins et al. 2017 traverse -3..3), from the first test image's posterior mean.
TRAVERSAL_ROWS = 8
TRAVERSAL_VALUES = tuple(np.linspace(-3.0, 3.0, 9))
# Burda et al. 2016 (sec. 5): a latent dimension whose posterior mean varies over the data by
# more than this (variance) is active.
ACTIVE_UNIT_VARIANCE = 0.01


def _batches(images, batch_size):
    for start in range(0, len(images), batch_size):
        yield start // batch_size, images[start:start + batch_size]


def _bits_per_dim(nats, images):
    return float(nats) / (float(np.prod(images.shape[1:])) * math.log(2.0))


def likelihood_metrics(model, images, iwae_k=IWAE_SAMPLES, batch_size=256, seed=0):
    """Upper bounds on the test negative log-likelihood of the 8-bit `images`,
    averaged over every image:

    * `test_nelbo_nats`, `test_bits_per_dim`: the negative ELBO (one posterior
      sample per image, analytic KL), in nats per image and in bits per
      dimension (`nats / (H W C ln 2)`);
    * `test_iwae_nats`, `test_iwae_bits_per_dim`: the importance-weighted bound
      (Burda et al. 2016) with `iwae_samples` = k samples per image (lower than
      the ELBO's: tighter), on `iwae_images` images (all of them; k decodes each:
      about 2 minutes for Fashion-MNIST's 10,000 on 2 cores).
    Batch b draws with the stateless seed `(seed, b)`: the figures are reproducible.
    """
    nelbo = np.concatenate([np.asarray(model.negative_elbo(batch, (seed, b)))
                            for b, batch in _batches(images, batch_size)])
    per_call = max(1, IWAE_DECODES_PER_CALL // iwae_k)
    iwae = np.concatenate([np.asarray(model.importance_weighted_nll(batch, iwae_k, (seed + 1, b)))
                           for b, batch in _batches(images, per_call)])
    return {"test_nelbo_nats": float(np.mean(nelbo)), "test_bits_per_dim": _bits_per_dim(np.mean(nelbo), images),
            "test_iwae_nats": float(np.mean(iwae)), "test_iwae_bits_per_dim": _bits_per_dim(np.mean(iwae), images),
            "iwae_samples": int(iwae_k), "iwae_images": int(len(iwae))}


def reconstruction_metrics(model, images, path=None, shown=16, batch_size=256):
    """`reconstruction_mse`: the mean over images and values of the squared error of
    `model.reconstruct(images)` on [0, 1] intensities; with `path`, `reconstruction_plot`:
    a PNG of the first `shown` images (top row) above their reconstructions."""
    errors, shown_reconstructions = [], None
    for b, batch in _batches(images, batch_size):
        reconstructed = np.asarray(model.reconstruct(batch), np.float64)
        errors.append(np.mean(np.square(reconstructed - batch.astype(np.float64) / 255.0),
                              axis=tuple(range(1, batch.ndim))))
        if b == 0:
            shown_reconstructions = reconstructed[:shown]
    result = {"reconstruction_mse": float(np.mean(np.concatenate(errors)))}
    if path:
        rows = [images[:shown], np.round(np.clip(shown_reconstructions, 0, 1) * 255).astype(np.uint8)]
        result["reconstruction_plot"] = save_image_grid(rows, path, "top: test images; bottom: reconstructions")
    return result


def sample_metrics(model, images, output_dir=None, seeds=SAMPLE_SEEDS):
    """`sample_seeds` (serving `sample` with them gives the same images) and, with
    `output_dir`, `samples_plot` (`samples.png`, the images of `model.sample_images(seeds)`,
    8 a row). A model with `traverse` and `latent_activity` also gets `active_units` and,
    with `output_dir`, `traversal_plot` (`traversal.png`: a row per most active dimension,
    see `TRAVERSAL_VALUES`) and `traversal_dimensions`."""
    result = {"sample_seeds": [int(s) for s in seeds]}
    if output_dir:
        samples = np.asarray(model.sample_images(np.asarray(seeds, np.int32)))
        rows = [samples[i:i + 8] for i in range(0, len(samples), 8)]
        result["samples_plot"] = save_image_grid(rows, os.path.join(output_dir, "samples.png"),
                                                 f"samples of seeds {seeds[0]}..{seeds[-1]}")
    if hasattr(model, "traverse") and hasattr(model, "latent_activity"):
        result.update(_traversal(model, images, output_dir))
    return result


def _traversal(model, images, output_dir):
    activity = np.asarray(model.latent_activity(images[:1000]))
    result = {"active_units": int(np.sum(activity > ACTIVE_UNIT_VARIANCE))}
    if output_dir:
        dimensions = [int(d) for d in np.argsort(-activity)[:TRAVERSAL_ROWS]]
        grid = np.asarray(model.traverse(images[0], dimensions, TRAVERSAL_VALUES))
        result["traversal_dimensions"] = dimensions
        result["traversal_plot"] = save_image_grid(
            list(grid), os.path.join(output_dir, "traversal.png"),
            f"rows: latent dimensions {dimensions} (most active first) from -3 to 3")
    return result


def save_image_grid(rows, path, caption=None, tile=48):
    """Saves a PNG of uint8 images, `rows` a list of `[n, H, W, C]` arrays (one row
    each, C = 1 or 3), each image enlarged to about `tile` px, a caption line under
    it; returns `path`."""
    from PIL import Image, ImageDraw

    h, w = rows[0].shape[1:3]
    scale, pad = max(1, tile // max(h, w)), 2
    columns = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(np.asarray(row)):
            image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y:y + h, x:x + w] = image
    grid = np.kron(grid, np.ones((scale, scale, 1), np.uint8))
    extra = 16 if caption else 0
    canvas = Image.new("RGB", (max(grid.shape[1], 6 * len(caption or "") + 8), grid.shape[0] + extra),
                       (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (0, 0))
    if caption:
        ImageDraw.Draw(canvas).text((4, grid.shape[0] + 2), caption, fill=(0, 0, 0))
    canvas.save(path)
    return path
