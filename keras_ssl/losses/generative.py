"""Losses of the generative methods: the VAE's KL term and VQ-VAE's quantisation.

    gaussian_kl(mean, log_variance)                      KL(q(z|x) || N(0, I)) per example
    vector_quantize(z, codebook, commitment_cost=0.25)   nearest code, straight-through
    discretized_logistic_nll(pixels, mean, log_scale)    -log p(8-bit image) per example
    bits_per_dim(nll_nats, dims)                         nats per example -> bits per dimension

Both compute in float32 whatever the compute dtype.
"""

import math

import tensorflow as tf

# A logistic's log-scale is kept above this (a scale of 1/255^2: far below one 8-bit
# step), so that a collapsed scale cannot make the likelihood infinite.
MIN_LOG_SCALE = -2.0 * math.log(255.0)


def gaussian_kl(mean, log_variance):
    """KL(N(mean, exp(log_variance)) || N(0, I)) per example, in nats:

        KL = 0.5 * sum_j (mean_j^2 + exp(log_variance_j) - 1 - log_variance_j)

    summed over every non-batch axis (Kingma & Welling 2014, Appendix B).
    Returns float32 `[B]`.
    """
    mean = tf.cast(mean, tf.float32)
    log_variance = tf.cast(log_variance, tf.float32)
    terms = 0.5 * (tf.square(mean) + tf.exp(log_variance) - 1.0 - log_variance)
    return tf.reduce_sum(tf.reshape(terms, [tf.shape(terms)[0], -1]), axis=1)


def vector_quantize(z, codebook, commitment_cost=0.25):
    """Nearest-neighbour vector quantisation with the straight-through gradient
    (van den Oord et al. 2017, eq. 3; beta = 0.25 is the paper's).

    Args:
      z: encoder outputs `[..., D]`.
      codebook: `[K, D]` code vectors.
      commitment_cost: beta.

    Returns `(quantized, indices, codebook_loss, commitment_loss)`:
      * `quantized = z + stop_gradient(e - z)`, `e` the nearest code of each
        vector in squared Euclidean distance (the value of `e`, the gradient
        of `z`);
      * `indices`: int32 `[...]`, the argmin codes;
      * `codebook_loss = mean((e - stop_gradient(z))^2)`: moves the codes;
      * `commitment_loss = commitment_cost * mean((z - stop_gradient(e))^2)`:
        keeps the encoder near its codes;
    both means over all elements, as the Sonnet and keras.io references take them.
    """
    z = tf.cast(z, tf.float32)
    codebook = tf.cast(codebook, tf.float32)
    flat = tf.reshape(z, [-1, tf.shape(codebook)[1]])
    distances = (tf.reduce_sum(tf.square(flat), axis=1, keepdims=True) - 2.0 * tf.matmul(flat, codebook,
                                                                                          transpose_b=True)
                 + tf.reduce_sum(tf.square(codebook), axis=1)[None, :])
    flat_indices = tf.argmin(distances, axis=1, output_type=tf.int32)
    indices = tf.reshape(flat_indices, tf.shape(z)[:-1])
    e = tf.reshape(tf.gather(codebook, flat_indices), tf.shape(z))
    codebook_loss = tf.reduce_mean(tf.square(e - tf.stop_gradient(z)))
    commitment_loss = commitment_cost * tf.reduce_mean(tf.square(z - tf.stop_gradient(e)))
    quantized = z + tf.stop_gradient(e - z)
    return quantized, indices, codebook_loss, commitment_loss


def discretized_logistic_nll(pixels, mean, log_scale):
    """-log p(pixels) per example, in nats, under a discretised logistic per value
    (Salimans et al. 2017, PixelCNN++ eq. 2, one mixture component).

    `pixels`: the 8-bit values, uint8 or numbers in {0, ..., 255}, `[B, ...]`;
    `mean` (on the [0, 1] intensity scale) and `log_scale` of the logistic, the
    same shape. Value k gets the logistic's mass on its bin
    `[(k - 0.5) / 255, (k + 0.5) / 255]`, with the bins of 0 and 255 open to
    -inf and +inf, so the 256 probabilities sum to 1 and the result is a true
    negative log-likelihood of the 8-bit image (bits/dim comparable across
    models). Summed over every non-batch axis: float32 `[B]`.
    """
    x = tf.cast(pixels, tf.float32) / 255.0
    mean = tf.cast(mean, tf.float32)
    log_scale = tf.maximum(tf.cast(log_scale, tf.float32), MIN_LOG_SCALE)
    inverse_scale = tf.exp(-log_scale)
    centred = x - mean
    upper = inverse_scale * (centred + 0.5 / 255.0)
    lower = inverse_scale * (centred - 0.5 / 255.0)
    log_cdf_upper = upper - tf.nn.softplus(upper)  # log sigmoid(upper): the bin of 0
    log_survival_lower = -tf.nn.softplus(lower)  # log (1 - sigmoid(lower)): the bin of 255
    # log(sigmoid(u) - sigmoid(l)) = u - softplus(u) - softplus(l) + log(1 - exp(l - u)): exact and
    # finite however far the bin lies in the tails or however wide the logistic is
    log_mass = log_cdf_upper - tf.nn.softplus(lower) + tf.math.log(-tf.math.expm1(lower - upper))
    log_p = tf.where(x < 0.5 / 255.0, log_cdf_upper, tf.where(x > 254.5 / 255.0, log_survival_lower, log_mass))
    return -tf.reduce_sum(tf.reshape(log_p, [tf.shape(log_p)[0], -1]), axis=1)


def bits_per_dim(nll_nats, dims):
    """A negative log-likelihood in nats per example -> bits per dimension:
    `nll / (dims * ln 2)` (`dims`: values per example, e.g. H * W * C)."""
    return tf.cast(nll_nats, tf.float32) / (float(dims) * math.log(2.0))
