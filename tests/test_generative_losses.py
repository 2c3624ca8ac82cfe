"""The generative losses against independent NumPy computations of their formulas."""

import numpy as np
import tensorflow as tf

from keras_ssl.losses import gaussian_kl, vector_quantize


def test_gaussian_kl_is_the_closed_form_per_example_over_every_axis():
    rng = np.random.default_rng(0)
    mean, log_variance = rng.normal(size=(5, 3, 2, 4)), rng.normal(size=(5, 3, 2, 4))
    got = gaussian_kl(tf.constant(mean, tf.float32), tf.constant(log_variance, tf.float32)).numpy()
    variance = np.exp(log_variance)
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, per dimension
    expected = (np.log(1.0 / np.sqrt(variance)) + (variance + mean ** 2) / 2 - 0.5).reshape(5, -1).sum(axis=1)
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(gaussian_kl(tf.zeros([2, 7]), tf.zeros([2, 7])).numpy(), 0.0, atol=1e-7)
    # mixed precision: float16 inputs, float32 result
    assert gaussian_kl(tf.zeros([2, 3], tf.float16), tf.zeros([2, 3], tf.float16)).dtype == tf.float32


def test_vector_quantize_picks_the_nearest_code_with_the_references_losses_and_gradients():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    codebook = rng.normal(size=(6, 4)).astype(np.float32)
    distances = ((z[..., None, :] - codebook) ** 2).sum(-1)
    indices = distances.argmin(-1)
    e = codebook[indices]
    z_t, codebook_t = tf.Variable(z), tf.Variable(codebook)
    with tf.GradientTape(persistent=True) as tape:
        quantized, got_indices, codebook_loss, commitment_loss = vector_quantize(z_t, codebook_t, 0.25)
        through = tf.reduce_sum(quantized * 3.0)
    np.testing.assert_array_equal(got_indices.numpy(), indices)
    np.testing.assert_allclose(quantized.numpy(), e, atol=1e-6)  # z + (e - z) in float32
    np.testing.assert_allclose(codebook_loss.numpy(), ((e - z) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(commitment_loss.numpy(), 0.25 * ((z - e) ** 2).mean(), rtol=1e-5)
    # straight-through: d quantized / d z is the identity; no gradient to the codebook through it
    np.testing.assert_allclose(tape.gradient(through, z_t).numpy(), 3.0)
    assert tape.gradient(through, codebook_t) is None
    # the codebook loss moves only the codes, the commitment loss only the encoder
    assert tape.gradient(codebook_loss, z_t) is None
    assert tape.gradient(commitment_loss, codebook_t) is None
    grad_codes = tf.convert_to_tensor(tape.gradient(codebook_loss, codebook_t)).numpy()
    expected = np.zeros_like(codebook)
    for vector, k in zip(z.reshape(-1, 4), indices.reshape(-1)):
        expected[k] += 2.0 * (codebook[k] - vector) / z.size
    np.testing.assert_allclose(grad_codes, expected, rtol=1e-4, atol=1e-7)


def _log_cdf(x):
    return -np.logaddexp(0.0, -x)  # log(1 / (1 + exp(-x)))


def test_discretized_logistic_nll_is_the_bin_mass_and_sums_to_one_over_the_256_values():
    from keras_ssl.losses import bits_per_dim, discretized_logistic_nll

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(3, 4, 4, 1))
    pixels[0, 0, 0, 0], pixels[0, 0, 1, 0] = 0, 255  # the open-ended bins
    mean = rng.uniform(0, 1, size=pixels.shape)
    log_scale = rng.uniform(-5, -1, size=pixels.shape)
    scale = np.exp(log_scale)
    x = pixels / 255.0
    # P(k) = F(u) - F(l) = S(l) - S(u), F the logistic CDF and S = 1 - F, in float64 logs (the tails
    # underflow): through F below the mean, through S above it
    u = np.where(pixels == 255, np.inf, (x + 0.5 / 255 - mean) / scale)
    l = np.where(pixels == 0, -np.inf, (x - 0.5 / 255 - mean) / scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = _log_cdf(u) + np.log1p(-np.exp(_log_cdf(l) - _log_cdf(u)))
        above = _log_cdf(-l) + np.log1p(-np.exp(_log_cdf(-u) - _log_cdf(-l)))
    expected = -np.where(u + l < 0, below, above).reshape(3, -1).sum(axis=1)
    got = discretized_logistic_nll(tf.constant(pixels, tf.uint8), tf.constant(mean, tf.float32),
                                   tf.constant(log_scale, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # a distribution over the 256 values: the probabilities of every value sum to 1
    every = np.arange(256).reshape(256, 1)
    for m, ls in ((0.3, -3.0), (0.0, -6.0), (0.999, -2.0), (0.5, -9.0)):
        nll = discretized_logistic_nll(tf.constant(every), tf.fill([256, 1], m), tf.fill([256, 1], ls)).numpy()
        np.testing.assert_allclose(np.exp(-nll.astype(np.float64)).sum(), 1.0, atol=2e-3)
    np.testing.assert_allclose(bits_per_dim(tf.constant([784 * np.log(2.0)]), 784).numpy(), [1.0], rtol=1e-6)
