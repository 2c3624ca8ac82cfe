"""Metric-learning losses (Siamese and triplet networks): the contrastive loss of
pairs (Hadsell et al. 2006), the triplet loss (FaceNet) and triplet mining inside
the batch (FaceNet's semi-hard; Hermans et al. 2017's batch-hard and batch-all),
the Multi-Similarity loss with its pair mining (Wang et al. 2019), with their
`keras.losses.Loss` wrappers."""

import keras
import tensorflow as tf

from keras_ssl.errors import UserError

_MIN_SQUARED = 1e-12  # floor under d^2 before a sqrt: finite gradient at d = 0
NEGATIVE_HINGES = ("distance", "squared")
MINING = ("semi_hard", "hard", "all")
# Multi-Similarity (Wang et al. 2019): alpha = 2 (positives' scale) and beta = 50 (negatives'), the
# paper's; lambda = 0.5 (the similarity both are measured from), the authors' code's `thresh` (and
# pytorch-metric-learning's and TF Similarity's default; the paper's text gives 1); epsilon = 0.1
# (the mining margin, paper and code).
MS_ALPHA, MS_BETA, MS_BASE, MS_EPSILON = 2.0, 50.0, 0.5, 0.1


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


def multi_similarity_terms(labels, embeddings, alpha=MS_ALPHA, beta=MS_BETA, base=MS_BASE, epsilon=MS_EPSILON):
    """The Multi-Similarity loss per anchor (Wang et al. 2019, eq. 12, with the mining of
    its section 4.1): `(values [B], counted [B], kept [B, B])`.

    On the cosine similarities `S` of the L2-normalised embeddings, for anchor i with
    positives P_i (same label, not i) and negatives N_i:

    * mining keeps a negative k when `S_ik + epsilon > min_{j in P_i} S_ij` and a positive j
      when `S_ij - epsilon < max_{k in N_i} S_ik`;
    * `L_i = 1/alpha log(1 + sum_{kept j} exp(-alpha (S_ij - base)))
           + 1/beta log(1 + sum_{kept k} exp(beta (S_ik - base)))`,

    0 for an anchor that keeps no positive or no negative (the authors' code skips it). The
    loss is the mean of `values` over `counted` (anchors with a positive and a negative);
    `kept` marks the mined pairs. Float32 whatever the input dtype.
    """
    labels = tf.reshape(labels, [-1])
    e = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
    s = tf.matmul(e, e, transpose_b=True)
    n = tf.shape(s)[0]
    same = tf.equal(labels[:, None], labels[None, :])
    pos_mask = tf.logical_and(same, tf.logical_not(tf.eye(n, dtype=tf.bool)))
    neg_mask = tf.logical_not(same)
    hardest_neg = tf.reduce_max(tf.where(neg_mask, s, -2.0), axis=1, keepdims=True)  # cosines are >= -1
    hardest_pos = tf.reduce_min(tf.where(pos_mask, s, 2.0), axis=1, keepdims=True)
    keep_pos = tf.logical_and(pos_mask, s - epsilon < hardest_neg)
    keep_neg = tf.logical_and(neg_mask, s + epsilon > hardest_pos)

    def soft_sum(mask, x, scale):  # 1/scale log(1 + sum over mask of exp(x)), stable
        logits = tf.concat([tf.zeros([n, 1]), tf.where(mask, x, -float("inf"))], axis=1)
        return tf.reduce_logsumexp(logits, axis=1) / scale

    both = tf.logical_and(tf.reduce_any(keep_pos, axis=1), tf.reduce_any(keep_neg, axis=1))
    terms = soft_sum(keep_pos, -alpha * (s - base), alpha) + soft_sum(keep_neg, beta * (s - base), beta)
    counted = tf.logical_and(tf.reduce_any(pos_mask, axis=1), tf.reduce_any(neg_mask, axis=1))
    return tf.where(both, terms, 0.0), counted, tf.logical_or(keep_pos, keep_neg)


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
