"""NT-Xent against an independent NumPy computation, on one and on two replicas."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses


def numpy_nt_xent(z_a, z_b, temperature):
    """Mean over the 2N anchors of -log softmax(positive) over the other 2N - 1 views."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z_a)
    sim = z @ z.T / temperature
    total = 0.0
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        others = [sim[i, k] for k in range(2 * n) if k != i]
        log_denominator = np.log(np.sum(np.exp(others)))
        total += log_denominator - sim[i, positive]
    return total / (2 * n)


@pytest.mark.parametrize("n", [1, 2, 7, 16])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_numpy(n, temperature):
    rng = np.random.default_rng(n * 10 + int(temperature * 10))
    z_a, z_b = rng.normal(size=(2, n, 6)).astype(np.float32) * 3
    got = float(losses.nt_xent(z_a, z_b, temperature))
    np.testing.assert_allclose(got, numpy_nt_xent(z_a, z_b, temperature), rtol=1e-5, atol=1e-6)


def test_nt_xent_known_case():
    # Two images, views identical and orthogonal across images:
    # s(a1,b1) = 1/t, every other similarity 0 -> loss = log(e^(1/t) + 2) - 1/t.
    z = np.eye(2, 4, dtype=np.float32)
    t = 0.5
    expected = np.log(np.exp(1 / t) + 2) - 1 / t
    np.testing.assert_allclose(float(losses.nt_xent(z, z, t)), expected, rtol=1e-6)
    # A single pair has only its positive as candidate: loss 0.
    np.testing.assert_allclose(float(losses.nt_xent(z[:1], z[:1] * 2, t)), 0.0, atol=1e-6)


def test_nt_xent_accuracy_flags_and_scale_invariance():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 5)).astype(np.float32)
    terms, correct = losses.nt_xent_terms(z, z + 1e-3, 0.5)
    assert terms.shape == (16,) and bool(tf.reduce_all(correct))
    # L2 normalisation inside: scaling the inputs changes nothing.
    np.testing.assert_allclose(float(losses.nt_xent(z, z[::-1])), float(losses.nt_xent(10 * z, 3 * z[::-1])),
                               rtol=1e-5)


def test_nt_xent_float32_logits_from_bfloat16():
    rng = np.random.default_rng(1)
    z_a, z_b = rng.normal(size=(2, 4, 8)).astype(np.float32)
    loss = losses.nt_xent(tf.cast(z_a, tf.bfloat16), tf.cast(z_b, tf.bfloat16), 0.1)
    assert loss.dtype == tf.float32 and np.isfinite(float(loss))


def test_keras_loss_wrapper_and_config():
    rng = np.random.default_rng(2)
    z_a, z_b = rng.normal(size=(2, 5, 3)).astype(np.float32)
    loss = losses.NTXent(temperature=0.2)
    expected = numpy_nt_xent(z_a, z_b, 0.2)
    np.testing.assert_allclose(float(loss(np.zeros(5), np.stack([z_a, z_b], axis=1))), expected, rtol=1e-5)
    np.testing.assert_allclose(float(loss(np.zeros(5), np.concatenate([z_a, z_b], axis=1))), expected, rtol=1e-5)
    clone = losses.NTXent.from_config(loss.get_config())
    assert clone.temperature == 0.2 and clone.cross_replica


def _single_and_distributed(strategy, x_a, x_b, sizes, cross_replica=True):
    """Loss and gradient on one device, and summed over two replicas with the given split."""
    w_init = np.random.default_rng(3).normal(size=(x_a.shape[1], 4)).astype(np.float32)
    w = tf.Variable(w_init)
    with tf.GradientTape() as tape:
        single_loss = losses.nt_xent(x_a @ w, x_b @ w, 0.5)
    single_grad = tape.gradient(single_loss, w)

    with strategy.scope():
        w_dist = tf.Variable(w_init)
    bounds = np.cumsum([0] + list(sizes))
    n_global = bounds[-1]

    def local(ctx):
        r = ctx.replica_id_in_sync_group
        return x_a[bounds[r]:bounds[r + 1]], x_b[bounds[r]:bounds[r + 1]]

    values = strategy.experimental_distribute_values_from_function(local)

    @tf.function
    def step(values):
        def replica_fn(pair):
            a, b = pair
            with tf.GradientTape() as tape:
                terms, _ = losses.nt_xent_terms(a @ w_dist, b @ w_dist, 0.5, cross_replica=cross_replica)
                loss = tf.reduce_sum(terms) / (2.0 * n_global)
            return loss, tape.gradient(loss, w_dist)

        loss, grad = strategy.run(replica_fn, args=(values,))
        return (strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", grad, axis=None))

    dist_loss, dist_grad = step(values)
    return float(single_loss), single_grad.numpy(), float(dist_loss), dist_grad.numpy()


@pytest.mark.parametrize("sizes", [(8, 8), (8, 7)])
def test_nt_xent_cross_replica_equals_one_device(two_cpu_strategy, sizes):
    rng = np.random.default_rng(sum(sizes))
    n = sum(sizes)
    x_a, x_b = rng.normal(size=(2, n, 6)).astype(np.float32)
    loss1, grad1, loss2, grad2 = _single_and_distributed(two_cpu_strategy, x_a, x_b, sizes)
    np.testing.assert_allclose(loss2, loss1, rtol=1e-5)
    np.testing.assert_allclose(grad2, grad1, rtol=1e-4, atol=1e-6)


def test_nt_xent_local_negatives_differ(two_cpu_strategy):
    rng = np.random.default_rng(4)
    x_a, x_b = rng.normal(size=(2, 16, 6)).astype(np.float32)
    loss1, _, loss_local, _ = _single_and_distributed(two_cpu_strategy, x_a, x_b, (8, 8), cross_replica=False)
    assert abs(loss_local - loss1) > 1e-3


def numpy_info_nce(queries, keys, positives, temperature, exclude):
    """Per query: log sum_j exp(q.k_j / t) over the keys not excluded, minus q.k_positive / t."""
    q, k = queries.astype(np.float64), keys.astype(np.float64)
    out = []
    for i in range(len(q)):
        logits = [q[i] @ k[j] / temperature for j in range(len(k)) if exclude is None or j != exclude[i]]
        out.append(np.log(np.sum(np.exp(logits))) - q[i] @ k[positives[i]] / temperature)
    return np.array(out)


@pytest.mark.parametrize("use_exclude", [False, True])
def test_info_nce_matches_numpy(use_exclude):
    rng = np.random.default_rng(3)
    queries, keys = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    positives = rng.integers(0, 9, 5)
    exclude = (positives + 1) % 9 if use_exclude else None
    terms, correct = losses.info_nce_terms(queries, keys, positives, 0.3, exclude)
    np.testing.assert_allclose(terms.numpy(), numpy_info_nce(queries, keys, positives, 0.3, exclude), rtol=1e-5)
    np.testing.assert_allclose(float(losses.info_nce(queries, keys, positives, 0.3, exclude)),
                               numpy_info_nce(queries, keys, positives, 0.3, exclude).mean(), rtol=1e-5)
    logits = queries @ keys.T
    if use_exclude:
        logits[np.arange(5), exclude] = -np.inf
    assert correct.numpy().tolist() == (logits.argmax(1) == positives).tolist()
