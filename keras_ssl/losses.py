"""Losses of keras_ssl: pure functions plus thin `keras.losses.Loss` wrappers.

Each function's docstring gives its formula and source; tests check each
against an independent NumPy computation. Every loss computes in
float32 whatever the compute dtype (mixed precision safe).
"""

import keras
import tensorflow as tf

from keras_ssl.errors import UserError

# Value subtracted from masked logits. Logits are float32 here, so 1e9 cannot
# overflow (in float16 it would become inf: float16's largest value is 65504).
_MASK_VALUE = 1e9


def gather_across_replicas(z):
    """All-gathers `z` over the replicas of the current replica context.

    Returns `(gathered, offset)`: the concatenation of every replica's `z` along
    axis 0 (differentiable: gradients flow back to the replica that owns each
    row) and the row at which this replica's rows start. The offset comes from
    the gathered sizes, so an uneven split (15 -> 8/7) is handled.
    Outside a multi-replica context returns `(z, 0)`.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return z, tf.constant(0, tf.int32)
    local_size = tf.shape(z, out_type=tf.int32)[:1]
    sizes = ctx.all_gather(local_size, axis=0)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica_id])
    return ctx.all_gather(z, axis=0), offset


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


def nt_xent_terms(z_a, z_b, temperature=0.5, cross_replica=True):
    """Per-anchor NT-Xent losses and "positive ranked first" flags.

    SimCLR's normalised temperature-scaled cross entropy (Chen et al. 2020,
    eq. 1), InfoNCE (`info_nce_terms`) over both views. With `z` L2-normalised
    and `s(u, v) = u.v / temperature`, the loss of anchor `z_a[i]` is

        -log( exp(s(a_i, b_i)) / sum_{k != a_i} exp(s(a_i, k)) )

    where `k` runs over all 2N views except the anchor itself (the
    self-similarity is masked); the same for every `z_b[i]` with the roles of
    `a` and `b` swapped. Inside a multi-replica context with
    `cross_replica=True` the keys `k` come from every replica (all-gather), so
    each replica's terms equal the corresponding terms of one device holding
    the whole global batch.

    Args:
      z_a, z_b: `[n, d]` projections of the two views of the same n images.
      temperature: softmax temperature; 0.5 is the SimCLR paper's CIFAR-10
        default (its Table 5 / Appendix B.9).
      cross_replica: gather negatives from all replicas (SimCLR's default).

    Returns:
      `(losses, correct)`: float32 `[2n]` losses (views a first, then b) and
      bool `[2n]`, True where the positive has the largest logit.
    """
    z_a = tf.math.l2_normalize(tf.cast(z_a, tf.float32), axis=-1)
    z_b = tf.math.l2_normalize(tf.cast(z_b, tf.float32), axis=-1)
    if cross_replica:
        keys_a, offset = gather_across_replicas(z_a)
        keys_b, _ = gather_across_replicas(z_b)
    else:
        keys_a, keys_b, offset = z_a, z_b, tf.constant(0, tf.int32)
    own = tf.range(tf.shape(z_a)[0]) + offset  # each anchor's row among the gathered keys
    n_keys = tf.shape(keys_a)[0]
    # Keys [other view; same view]: the positive is the other view's row, the anchor itself is masked.
    terms_a, correct_a = info_nce_terms(z_a, tf.concat([keys_b, keys_a], 0), own, temperature, own + n_keys)
    terms_b, correct_b = info_nce_terms(z_b, tf.concat([keys_a, keys_b], 0), own, temperature, own + n_keys)
    return tf.concat([terms_a, terms_b], 0), tf.concat([correct_a, correct_b], 0)


def nt_xent(z_a, z_b, temperature=0.5, cross_replica=True):
    """NT-Xent loss (SimCLR), mean over the 2N anchors; see `nt_xent_terms`.

    On one device this is the mean over all 2N anchors of the batch. In a
    multi-replica context it is the mean over this replica's anchors, with
    negatives from every replica: average it over replicas (Keras's
    convention, `loss / num_replicas_in_sync` before `apply_gradients`) to get
    the global loss and gradients of one device holding the whole batch.
    """
    losses, _ = nt_xent_terms(z_a, z_b, temperature, cross_replica)
    return tf.reduce_mean(losses)


@keras.saving.register_keras_serializable(package="keras_ssl")
class NTXent(keras.losses.Loss):
    """`keras.losses.Loss` wrapper of `nt_xent` for `compile(loss=NTXent())`.

    `y_pred` holds both views' projections stacked on axis 1, `[N, 2, d]`
    (or concatenated on the last axis, `[N, 2d]`); `y_true` is ignored. The
    per-sample value is the mean of the two anchors of a pair, so Keras's
    default "sum_over_batch_size" reduction gives exactly `nt_xent`.
    """

    def __init__(self, temperature=0.5, cross_replica=True, name="nt_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = float(temperature)
        self.cross_replica = bool(cross_replica)

    def call(self, y_true, y_pred):
        del y_true
        if y_pred.shape.rank == 3:
            z_a, z_b = y_pred[:, 0], y_pred[:, 1]
        else:
            z_a, z_b = tf.split(y_pred, 2, axis=-1)
        losses, _ = nt_xent_terms(z_a, z_b, self.temperature, self.cross_replica)
        return tf.reduce_mean(tf.reshape(losses, [2, -1]), axis=0)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, cross_replica=self.cross_replica)
        return config


# --------------------------------------------------------------------------
# Metric-learning losses (Siamese, triplet networks)
# --------------------------------------------------------------------------

_MIN_SQUARED = 1e-12  # floor under d^2 before a sqrt: finite gradient at d = 0
NEGATIVE_HINGES = ("distance", "squared")
MINING = ("semi_hard", "hard", "all")


def _squared_distance(a, b):
    a = tf.cast(a, tf.float32)
    b = tf.cast(b, tf.float32)
    return tf.reduce_sum(tf.square(a - b), axis=-1)


def _safe_sqrt(squared):
    """sqrt that has a finite (zero) gradient at 0."""
    return tf.sqrt(tf.maximum(squared, _MIN_SQUARED))


def contrastive_terms(same, emb_a, emb_b, margin=1.0, negative_hinge="distance"):
    """Per-pair contrastive losses `[N]`; see `contrastive`."""
    if negative_hinge not in NEGATIVE_HINGES:
        raise UserError(f"negative_hinge must be one of {NEGATIVE_HINGES}, got {negative_hinge!r}")
    same = tf.cast(tf.reshape(same, [-1]), tf.float32)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.logical_or(tf.equal(same, 0.0), tf.equal(same, 1.0))),
        ["contrastive: `same` labels must be 0 (different class) or 1 (same class)"])
    with tf.control_dependencies([check]):
        sq = _squared_distance(emb_a, emb_b)
    if negative_hinge == "distance":
        negative = tf.square(tf.nn.relu(margin - _safe_sqrt(sq)))
    else:
        negative = tf.nn.relu(margin * margin - sq)
    return same * sq + (1.0 - same) * negative


def contrastive(same, emb_a, emb_b, margin=1.0, negative_hinge="distance"):
    """Contrastive loss of Siamese pairs (Hadsell, Chopra, LeCun 2006), mean over pairs.

    With `d = ||a - b||_2` and `same = 1` for a pair of the same class:

    * `negative_hinge="distance"` (default, the paper's):
      `same * d^2 + (1 - same) * max(0, margin - d)^2`
    * `negative_hinge="squared"`:
      `same * d^2 + (1 - same) * max(0, margin^2 - d^2)`

    `margin=1.0` is the paper's. Labels must be 0 or 1 (checked at run time).
    """
    return tf.reduce_mean(contrastive_terms(same, emb_a, emb_b, margin, negative_hinge))


def triplet(emb_a, emb_p, emb_n, margin=0.2):
    """Triplet loss (Schroff et al. 2015), mean over triplets of
    `max(0, d(a,p)^2 - d(a,n)^2 + margin)`; `margin=0.2` is FaceNet's."""
    return tf.reduce_mean(tf.nn.relu(_squared_distance(emb_a, emb_p) - _squared_distance(emb_a, emb_n) + margin))


def pairwise_squared_distances(embeddings):
    """`[B, B]` squared Euclidean distances in float32, clipped at 0, exact 0 on the diagonal."""
    e = tf.cast(embeddings, tf.float32)
    sq = tf.reduce_sum(tf.square(e), axis=1)
    d = sq[:, None] - 2.0 * tf.matmul(e, e, transpose_b=True) + sq[None, :]
    d = tf.maximum(d, 0.0)
    return d * (1.0 - tf.eye(tf.shape(e)[0]))


def batch_triplet_terms(labels, embeddings, margin=0.2, mining="semi_hard", soft=False):
    """The mined terms of `batch_triplet` and which of them count: `(values, counted)`.

    `values` and the boolean `counted` have the shape of the mining unit:
    `[B]` anchors (hard), `[B, B]` anchor-positive pairs (semi_hard) or
    `[B, B, B]` triplets (all); the loss is the mean of `values` over `counted`.
    """
    if mining not in MINING:
        raise UserError(f"mining must be one of {MINING}, got {mining!r}")
    labels = tf.reshape(labels, [-1])
    d = pairwise_squared_distances(embeddings)
    n = tf.shape(d)[0]
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(n, dtype=tf.bool))
    pos_mask = tf.logical_and(same, not_self)
    neg_mask = tf.logical_not(same)
    has_neg = tf.reduce_any(neg_mask, axis=1)

    def hinge(x):
        return tf.nn.softplus(x) if soft else tf.nn.relu(x + margin)

    if mining == "hard":
        big = tf.reduce_max(d) + 1.0
        hardest_pos = tf.reduce_max(tf.where(pos_mask, d, 0.0), axis=1)
        hardest_neg = tf.reduce_min(tf.where(neg_mask, d, big), axis=1)
        valid = tf.logical_and(tf.reduce_any(pos_mask, axis=1), has_neg)
        return hinge(hardest_pos - hardest_neg), valid

    if mining == "semi_hard":
        big = tf.reduce_max(d) + 1.0
        # Each anchor's negative distances, ascending, non-negatives pushed to the end.
        sorted_neg = tf.sort(tf.where(neg_mask, d, big), axis=1)
        count_neg = tf.reduce_sum(tf.cast(neg_mask, tf.int32), axis=1)
        # First negative strictly farther than the positive: binary search per row.
        index = tf.searchsorted(sorted_neg, d, side="right")  # [B(anchor), B(positive)]
        found = index < count_neg[:, None]
        semi_hard = tf.gather(sorted_neg, tf.minimum(index, n - 1), batch_dims=1)
        farthest = tf.reduce_max(tf.where(neg_mask, d, 0.0), axis=1, keepdims=True)
        negative = tf.where(found, semi_hard, farthest)
        return hinge(d - negative), tf.logical_and(pos_mask, has_neg[:, None])

    # all: [anchor, positive, negative]
    values = hinge(d[:, :, None] - d[:, None, :])
    valid = tf.logical_and(pos_mask[:, :, None], neg_mask[:, None, :])
    return values, tf.logical_and(valid, values > 0.0)


def batch_triplet(labels, embeddings, margin=0.2, mining="semi_hard", soft=False):
    """Triplet loss with online mining inside the batch, on squared Euclidean distance.

    * `semi_hard` (FaceNet; TF Addons' rule): for every anchor-positive pair the
      negative with the smallest `d(a,n)^2` among those with `d(a,n)^2 > d(a,p)^2`,
      or if there is none the negative with the largest distance; mean over all
      anchor-positive pairs (of anchors that have a negative).
    * `hard` (batch-hard, Hermans et al. 2017): per anchor the farthest positive
      and the closest negative; mean over anchors with a positive and a negative.
    * `all` (batch-all): every valid triplet; mean over those whose loss is > 0.

    `soft=True` replaces `max(0, x + margin)` by `softplus(x)` (Hermans et al.).
    Memory is O(B^2) for `semi_hard` and `hard` (the semi-hard negative comes
    from a sorted row and a binary search, not a B^3 tensor); `all` is B^3 by
    nature. Anchors without a positive or a negative contribute nothing; an
    empty selection gives 0, never NaN. Float32 whatever the input dtype.
    """
    values, counted = batch_triplet_terms(labels, embeddings, margin, mining, soft)
    mask = tf.cast(counted, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


@keras.saving.register_keras_serializable(package="keras_ssl")
class Contrastive(keras.losses.Loss):
    """`contrastive` for `compile(loss=...)`: `y_true` = same (0/1), `y_pred` = `[N, 2, d]` pair embeddings."""

    def __init__(self, margin=1.0, negative_hinge="distance", name="contrastive", **kwargs):
        super().__init__(name=name, **kwargs)
        if negative_hinge not in NEGATIVE_HINGES:
            raise UserError(f"negative_hinge must be one of {NEGATIVE_HINGES}, got {negative_hinge!r}")
        self.margin = float(margin)
        self.negative_hinge = negative_hinge

    def call(self, y_true, y_pred):
        return contrastive_terms(y_true, y_pred[:, 0], y_pred[:, 1], self.margin, self.negative_hinge)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, negative_hinge=self.negative_hinge)
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class BatchTriplet(keras.losses.Loss):
    """`batch_triplet` for `compile(loss=...)`: `y_true` = int labels `[B]`, `y_pred` = embeddings `[B, d]`.

    The whole batch is one mining pool, so this wrapper reduces to a scalar
    itself (reduction "none" on Keras's side would be meaningless).
    """

    def __init__(self, margin=0.2, mining="semi_hard", soft=False, name="batch_triplet", **kwargs):
        super().__init__(name=name, **kwargs)
        if mining not in MINING:
            raise UserError(f"mining must be one of {MINING}, got {mining!r}")
        self.margin, self.mining, self.soft = float(margin), mining, bool(soft)

    def call(self, y_true, y_pred):
        return batch_triplet(y_true, y_pred, self.margin, self.mining, self.soft)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, mining=self.mining, soft=self.soft)
        return config
