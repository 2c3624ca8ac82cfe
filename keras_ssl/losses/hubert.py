"""HuBERT's masked prediction loss (Hsu et al. 2021, "HuBERT: Self-Supervised Speech
Representation Learning by Masked Prediction of Hidden Units", its method section).

    logits = hubert_logits(projected, cluster_embeddings, temperature=0.1)   # [B, T, C]
    loss = hubert_loss(logits, targets, mask, unmasked_weight=0.0)

The distribution over the C clusters at frame t (the paper's implementation: fairseq's
`compute_nce` with every cluster a candidate):

    p(c | X~, t) = softmax_c( cos(A o_t, e_c) / tau )

`A o_t` the projected Transformer output (`projected`), `e_c` the embedding of cluster c,
tau = 0.1. The loss:

    L = L_m + w * L_u,   L_m = mean over masked frames of -log p(z_t | X~, t),
                         L_u = the same over the unmasked frames

The paper writes L = alpha L_m + (1 - alpha) L_u with sums over frames and trains with
alpha = 1 (masked frames only, its best; it ablates alpha = 0 and 0.5): here the
means are over frames and `unmasked_weight` w = (1 - alpha) / alpha, 0 by default. A batch
without masked (unmasked) frames has L_m (L_u) = 0. Computed in float32 whatever the
inputs' dtype.
"""

import tensorflow as tf


def hubert_logits(projected, cluster_embeddings, temperature=0.1):
    """Cosine similarities of the frames `projected` `[..., D]` with the clusters'
    embeddings `[C, D]`, over `temperature`: float32 `[..., C]`."""
    o = tf.math.l2_normalize(tf.cast(projected, tf.float32), axis=-1, epsilon=1e-12)
    e = tf.math.l2_normalize(tf.cast(cluster_embeddings, tf.float32), axis=-1, epsilon=1e-12)
    return tf.einsum("...d,cd->...c", o, e) / float(temperature)


def hubert_cross_entropy_terms(logits, targets):
    """`-log softmax(logits)[target]` per frame and whether the target is the argmax:
    `(float32 [B, T], bool [B, T])` from logits `[B, T, C]` and int targets `[B, T]`."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.cast(targets, tf.int32)
    terms = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    correct = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets)
    return terms, correct


def hubert_loss(logits, targets, mask, unmasked_weight=0.0):
    """`L_m + unmasked_weight * L_u` (module docstring) of one batch: the mean cross-entropy
    over the frames where the bool `mask` `[B, T]` is True, plus `unmasked_weight` times
    the mean over the others; a float32 scalar."""
    terms, _ = hubert_cross_entropy_terms(logits, targets)
    mask = tf.cast(mask, tf.float32)
    masked = tf.reduce_sum(terms * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
    loss = masked
    if unmasked_weight:
        unmasked = tf.reduce_sum(terms * (1.0 - mask)) / tf.maximum(tf.reduce_sum(1.0 - mask), 1.0)
        loss = loss + float(unmasked_weight) * unmasked
    return loss
