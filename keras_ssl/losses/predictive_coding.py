"""InfoNCE (van den Oord et al. 2018) and its CPC form: a query picks its positive
key among negatives (`info_nce_terms`); CPC's context predicts the latent k steps
ahead against negatives drawn from the global batch (`cpc_info_nce_terms`)."""

import tensorflow as tf

from keras_ssl.losses.replicas import gather_across_replicas

# Value subtracted from masked logits. Logits are float32 here, so 1e9 cannot
# overflow (in float16 it would become inf: float16's largest value is 65504).
_MASK_VALUE = 1e9


def info_nce_terms(queries, keys, positives, temperature, exclude=None):
    """Per-query InfoNCE losses and "positive ranked first" flags.

    InfoNCE (van den Oord et al. 2018, eq. 4; the contrastive loss of CPC,
    MoCo and SimCLR): with `s(q, k) = q.k / temperature`, query `q_i` scores
    every key and its loss is the cross-entropy of picking its positive,

        -log( exp(s(q_i, k_{p_i})) / sum_{j != e_i} exp(s(q_i, k_j)) )

    where `p_i = positives[i]` and `e_i = exclude[i]` is a key left out of the
    denominator (the query itself when it is among the keys; -1 or None for
    none). The vectors are used as given: L2-normalise them first for the
    cosine similarity of SimCLR/MoCo (CPC uses a bilinear score: pass
    `W z` as keys).

    Args:
      queries: `[n, d]`.
      keys: `[m, d]`: positives and negatives (e.g. all-gathered over the
        replicas with `gather_across_replicas`, then `positives` are offset).
      positives: int `[n]`, the row of each query's positive in `keys`.
      temperature: softmax temperature (> 0).
      exclude: optional int `[n]` rows of `keys` masked out per query.

    Returns:
      `(losses, correct)`: float32 `[n]` and bool `[n]`.
    """
    queries = tf.cast(queries, tf.float32)
    keys = tf.cast(keys, tf.float32)
    positives = tf.cast(positives, tf.int32)
    logits = tf.matmul(queries, keys, transpose_b=True) * (1.0 / float(temperature))
    if exclude is not None:
        logits -= tf.one_hot(tf.cast(exclude, tf.int32), tf.shape(keys)[0], dtype=tf.float32) * _MASK_VALUE
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(positives, logits)
    correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), positives)
    return losses, correct


def info_nce(queries, keys, positives, temperature, exclude=None):
    """Mean InfoNCE over the queries; see `info_nce_terms`."""
    return tf.reduce_mean(info_nce_terms(queries, keys, positives, temperature, exclude)[0])


def cpc_negative_rows(num_latents, num_negatives, seed):
    """The rows of the flattened global latents `[B_global * T, D]` drawn as
    negatives: `num_negatives` uniform draws (with replacement) from a stateless
    generator, so every replica draws the same rows for the same `seed`."""
    return tf.random.stateless_uniform([int(num_negatives)], seed, 0, num_latents, dtype=tf.int32)


def cpc_info_nce_terms(predictions, latents, step, num_negatives=128, seed=(0, 0), cross_replica=True):
    """Per-prediction InfoNCE losses of Contrastive Predictive Coding, for one step k.

    CPC (van den Oord, Li, Vinyals 2018, eq. 3-4): the context `c_t` predicts
    the latent `k` steps ahead through `W_k`, scored bilinearly,
    `f_k(z, c_t) = exp(z . W_k c_t)` (no normalisation, no temperature, as in
    the paper). With `p_{b,t} = W_k c_{b,t}` (`predictions`) the loss of
    prediction `(b, t)` is

        -log( exp(p_{b,t} . z_{b,t+k}) / (exp(p_{b,t} . z_{b,t+k}) + sum_{j=1..M} exp(p_{b,t} . z_{n_j})) )

    where the M = `num_negatives` negatives `z_{n_j}` are latents drawn
    uniformly from every time step of every sequence of the global batch (so
    from the same and from other sequences, as in the paper; 128 draws as in
    Facebook's CPC_audio, Riviere et al. 2020), one draw shared by all
    predictions of the step (`cpc_negative_rows`, stateless from `seed`). A
    draw that is the prediction's own positive is left out of its sum. Inside
    a multi-replica context with `cross_replica=True` the latents come from
    every replica (all-gather) and every replica draws the same rows, so each
    replica's terms equal one device's on the whole global batch.

    `N = M + 1` candidates; the InfoNCE bound on the mutual information is
    `I(z_{t+k}; c_t) >= log(N) - L` (the paper's section 2.3).

    Args:
      predictions: `[B, T - k, D]`, `W_k c_t` for `t = 0 .. T-k-1`.
      latents: `[B, T, D]`, the encoder's `z`.
      step: k >= 1.
      num_negatives: M.
      seed: int `[2]`, the stateless seed of the draw (vary it per step).
      cross_replica: draw from (and gather) all replicas' latents.

    Returns:
      `(losses, correct, num_candidates)`: float32 `[B, T-k]`, bool `[B, T-k]`
      (the positive scored above every negative) and the scalar int32 `N`.
    """
    predictions = tf.cast(predictions, tf.float32)
    latents = tf.cast(latents, tf.float32)
    k = int(step)
    shape = tf.shape(latents)
    length, width = shape[1], shape[2]
    if cross_replica:
        gathered, offset = gather_across_replicas(tf.reshape(latents, [shape[0], -1]))
    else:
        gathered, offset = tf.reshape(latents, [shape[0], -1]), tf.constant(0, tf.int32)
    flat = tf.reshape(gathered, [-1, width])  # [B_global * T, D]
    rows = cpc_negative_rows(tf.shape(flat)[0], num_negatives, seed)
    positive = tf.einsum("btd,btd->bt", predictions, latents[:, k:])
    negative = tf.einsum("btd,md->btm", predictions, tf.gather(flat, rows))  # [B, T-k, M]
    batch, steps = tf.shape(predictions)[0], tf.shape(predictions)[1]
    own_rows = (tf.range(batch)[:, None] + offset) * length + tf.range(steps)[None, :] + k  # [B, T-k]
    negative -= tf.cast(tf.equal(own_rows[..., None], rows), tf.float32) * _MASK_VALUE
    logits = tf.concat([positive[..., None], negative], axis=-1)
    losses = tf.reduce_logsumexp(logits, axis=-1) - positive
    correct = positive > tf.reduce_max(negative, axis=-1)
    return losses, correct, tf.constant(int(num_negatives) + 1, tf.int32)
