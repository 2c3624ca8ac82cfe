"""A VQ-VAE's codebook on held-out images: how many codes it uses, how evenly, and the
decoder's likelihood of the images given their codes.

    codebook_perplexity   exp(-sum_k p_k log p_k), p the code usage over every grid cell
                          of the split: K when all codes are used equally, 1 for one code
    codes_used            the fraction of the K codes used at least once
    recon_bits_per_dim    -log2 p(x | z_q(x)) / (H W C): the decoder's discretised-logistic
                          NLL of the 8-bit image given its quantised codes, in bits per
                          dimension. It is NOT a bound on -log p(x): the codes are
                          chosen from x and their own cost (-log p(z) under a prior, at
                          most h w log2 K bits with a uniform one) is not counted; with a
                          prior over the codes, recon + prior bits compare with the VAE's.
    recon_nll_nats        the same NLL in nats per image
    codebook_usage_plot   a histogram of code usage (PNG), None without a run directory
"""

import math
import os

import numpy as np


def codebook_statistics(model, images, batch_size=256):
    """`(counts [K], NLL per image [N])` of the model's codes and reconstruction NLL (nats)
    over `images`, from `model.encode_and_score` in batches."""
    import tensorflow as tf

    counts = np.zeros(model.codebook_size, np.int64)
    nll = []
    for start in range(0, len(images), batch_size):
        codes, scores = model.encode_and_score(tf.convert_to_tensor(images[start:start + batch_size]))
        counts += np.bincount(np.asarray(codes).ravel(), minlength=model.codebook_size)
        nll.append(np.asarray(scores, np.float64))
    return counts, np.concatenate(nll) if nll else np.zeros(0)


def usage_figures(counts):
    """`codebook_perplexity`, `codes_used` and `codebook_size` of code counts `[K]` (the
    module docstring); the audio VQ-VAE's report uses them too."""
    counts = np.asarray(counts)
    p = counts[counts > 0] / max(int(counts.sum()), 1)
    return {"codebook_perplexity": float(np.exp(-np.sum(p * np.log(p)))), "codes_used": float(np.mean(counts > 0)),
            "codebook_size": int(len(counts))}


def usage_plot(counts, path, unit="grid cells", split="test split"):
    """Code usage as a bar per code, sorted by use (log scale; unused codes: no bar), as PNG;
    `unit`: what a code is counted in (grid cells, 20 ms frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = np.sort(counts)[::-1] / max(int(counts.sum()), 1)
    used = int((counts > 0).sum())
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.bar(np.arange(used), share[:used], width=1.0, color="tab:blue")
    ax.set_xlim(-0.5, len(counts) - 0.5)
    ax.set_yscale("log")
    ax.set(xlabel=f"code, by use ({used} of {len(counts)} used)", ylabel=f"share of {unit}",
           title=f"codebook usage on the {split}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_codebook(model, split, output_dir=None, batch_size=256):
    """The report of the module docstring for `split` (its images)."""
    counts, nll = codebook_statistics(model, split.images, batch_size)
    dims = int(np.prod(model.image_shape))
    mean_nll = float(np.mean(nll)) if len(nll) else float("nan")
    results = dict(usage_figures(counts), recon_bits_per_dim=mean_nll / (dims * math.log(2.0)),
                   recon_nll_nats=mean_nll, codebook_usage_plot=None)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        results["codebook_usage_plot"] = usage_plot(counts, os.path.join(output_dir, "codebook_usage.png"))
    return results
