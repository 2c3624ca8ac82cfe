"""Is a trained model usable? Non-finite weights and collapsed representations.

Used by training (a diverged epoch is never checkpointed), by
`keras-ssl-evaluate` and by `keras-ssl-export` (a diverged or collapsed model
is refused with the figure that shows it and what to change).

Collapse is measured by the *spread* of the representation: the standard
deviation over a batch of different images of the L2-normalised
representation, averaged over its D dimensions. Unit vectors spread evenly
over the sphere give about 1/sqrt(D) (SimCLR's `output_std`, Chen et al. 2020
report the same statistic); a collapsed model, which maps every image to
(nearly) one point, gives about 0. A model is called collapsed when its spread
is below `COLLAPSE_FRACTION / sqrt(D)`.
"""

import math

import numpy as np

from keras_ssl.errors import UserError

# Measured on 1,000 test images (EPYC-AVX2, 2026-11-30): untrained encoders, the least
# spread of healthy models, give 0.10-0.21 x 1/sqrt(D) (small_cnn and ResNet-18, widths
# 0.25 and 1, the 8x8 digits and Fashion-MNIST; an untrained 16-d triplet head 0.13-0.23 x).
# A collapsed triplet model (embedding std 0.003 at D = 16) gives about 0.012 x. 0.03 x
# sits between, 3x below the least spread healthy figure.
COLLAPSE_FRACTION = 0.03


# Weights beyond this magnitude are a diverged run even when finite (plain SGD at a learning
# rate of 1e6 drives them to 1e17 without an Inf): trained weights are O(1) (He-initialised,
# sqrt(2 / fan_in), and held there by batch norm and weight decay), and batch-norm moving
# variances of inputs in [0, 1] or [-1, 1] stay far below it.
EXPLODED_MAGNITUDE = 1e6


def nonfinite_variables(model):
    """`[(variable path, number of bad values), ...]` over all of `model`'s weights
    (trainable and not: batch-norm moving statistics too); bad: NaN, Inf, or a
    magnitude above `EXPLODED_MAGNITUDE`."""
    bad = []
    for v in model.weights:
        values = np.asarray(v.numpy())
        if values.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                good = np.isfinite(values) & (np.abs(values) <= EXPLODED_MAGNITUDE)
            count = int(values.size - np.count_nonzero(good))
            if count:
                bad.append((getattr(v, "path", v.name), count))
    return bad


def describe_nonfinite(bad, limit=3):
    """'12 NaN/Inf (or |w| > 1e6) values in 2 variables (a/kernel: 10, b/moving_variance: 2)'."""
    total = sum(n for _, n in bad)
    shown = ", ".join(f"{name}: {n}" for name, n in bad[:limit]) + (", ..." if len(bad) > limit else "")
    return (f"{total} NaN/Inf (or |w| > {EXPLODED_MAGNITUDE:.0e}) values in {len(bad)} "
            f"variable{'s' * (len(bad) != 1)} ({shown})")


def representation_spread(features):
    """Mean over dimensions of the std over the batch of the L2-normalised `features` `[N, D]`."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return float(np.mean(np.std(f, axis=0)))


def check_model(model, what):
    """Raises `UserError` when `model` has non-finite weights."""
    bad = nonfinite_variables(model)
    if bad:
        raise UserError(f"{what} has diverged: {describe_nonfinite(bad)}; retrain with a lower --learning_rate "
                        "(or another --optimizer) in a new --model_dir")


def check_representation(features, what):
    """Raises `UserError` when `features` (of different images) are non-finite or collapsed;
    returns the spread and its even value 1/sqrt(D) otherwise."""
    features = np.asarray(features)
    if not np.all(np.isfinite(features)):
        raise UserError(f"{what} gives NaN/Inf features; the model has diverged: retrain with a lower "
                        "--learning_rate in a new --model_dir")
    spread, even = representation_spread(features), 1.0 / math.sqrt(features.shape[1])
    if spread < COLLAPSE_FRACTION * even:
        raise UserError(f"{what} has collapsed: every image maps to nearly the same point (spread {spread:.2g} of "
                        f"the L2-normalised representation, {spread / even:.3f} x the even 1/sqrt(D) = {even:.3f}; "
                        f"below {COLLAPSE_FRACTION} x is refused); retrain with a lower --learning_rate, a larger "
                        "--margin or --temperature, or more --epochs, in a new --model_dir")
    return spread, even
