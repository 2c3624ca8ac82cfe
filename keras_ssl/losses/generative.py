"""Losses of the generative methods: the VAE's KL term and VQ-VAE's quantisation.

    gaussian_kl(mean, log_variance)                      KL(q(z|x) || N(0, I)) per example
    vector_quantize(z, codebook, commitment_cost=0.25)   nearest code, straight-through

Both compute in float32 whatever the compute dtype.
"""

import tensorflow as tf


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
