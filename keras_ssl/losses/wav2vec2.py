"""wav2vec 2.0's losses (Baevski, Zhou, Mohamed, Auli 2020, section 3.3): the contrastive
loss of a masked frame's context against its quantised latent and K distractors drawn
from other masked frames of the same utterance, and the codebook diversity loss.

    rows = sample_distractors(mask, 100, seed)                    # int32 [B, T, K]
    losses, correct, valid = wav2vec2_contrastive_terms(c, q, rows, mask, codes=codes)
    diversity = codebook_diversity(probabilities)                 # probabilities [N, G, V]

Every function computes in float32 whatever the compute dtype.
"""

import tensorflow as tf

# Logit subtracted from a distractor left out (logits are float32: 1e9 cannot overflow)
_MASK_VALUE = 1e9
# Baevski et al. 2020, section 4.2: K = 100 distractors, logit temperature kappa = 0.1
NUM_DISTRACTORS, LOGIT_TEMPERATURE = 100, 0.1


def codebook_perplexity(mean_probabilities):
    """`sum_g exp(H(p_g))` of distributions `[G, V]` (each row sums to 1): the perplexity
    per group summed over the groups (fairseq's `prob_perplexity`); G*V when every entry
    of every group is used equally, G when each group uses one. H is the entropy in nats
    with 0 log 0 = 0 (exact: no epsilon inside the log; the gradient of an unused entry
    is 0, never NaN)."""
    p = tf.cast(mean_probabilities, tf.float32)
    positive = p > 0
    entropy = -tf.reduce_sum(tf.where(positive, p * tf.math.log(tf.where(positive, p, 1.0)), 0.0), axis=-1)
    return tf.reduce_sum(tf.exp(entropy))


def diversity_of_mean(mean_probabilities):
    """The diversity loss of the batch-averaged distributions `[G, V]`:
    `(G*V - codebook_perplexity(p)) / (G*V)`, in [0, 1 - 1/V]."""
    p = tf.convert_to_tensor(mean_probabilities)
    total = tf.cast(tf.size(p), tf.float32)  # G*V
    return (total - codebook_perplexity(p)) / total


def codebook_diversity(probabilities):
    """wav2vec 2.0's codebook diversity loss (Baevski et al. 2020, eq. 4): with the
    softmax probabilities `p_{n,g,v}` of N frames over the V entries of each of G groups
    (`[N, G, V]`; the softmax of the quantiser's logits, without Gumbel noise or
    temperature, as fairseq's `prob_perplexity`),

        L_d = (G*V - sum_g exp(H(pbar_g))) / (G*V),   pbar_g = mean_n p_{n,g,:}

    H the entropy in nats. 0 when every entry of every group is used equally over the
    batch, 1 - 1/V when each group always picks the same entry. The paper writes
    `1/(GV) sum_g -H(pbar_g) = 1/(GV) sum_g sum_v pbar_{g,v} log pbar_{g,v}`; its
    implementation (fairseq's `get_extra_losses`) uses the perplexity form above, which
    maximises the same entropies and is the one the paper's alpha = 0.1 was tuned with."""
    p = tf.cast(tf.convert_to_tensor(probabilities), tf.float32)
    if p.shape.rank != 3:
        raise ValueError(f"probabilities must be [N, G, V], got shape {p.shape}")
    return diversity_of_mean(tf.reduce_mean(p, axis=0))


def masked_positions(mask):
    """`(positions, counts, ranks)` of a bool mask `[B, T]`: `positions` int32 `[B, T]`
    holds each row's masked frames first, in order (then the others); `counts` `[B]` the
    masked frames per row; `ranks` `[B, T]` each masked frame's index among its row's
    masked frames (meaningless at unmasked frames)."""
    mask = tf.convert_to_tensor(mask, tf.bool)
    length = tf.shape(mask)[1]
    frames = tf.range(length)[None, :]
    positions = tf.argsort(tf.where(mask, frames, frames + length), axis=1, stable=True)
    counts = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    ranks = tf.cumsum(tf.cast(mask, tf.int32), axis=1, exclusive=True)
    return positions, counts, ranks


def sample_distractors(mask, num_distractors=NUM_DISTRACTORS, seed=(0, 0), uniform=None):
    """K distractor frames for every masked frame: int32 `[B, T, K]`.

    For a masked frame t of row b with `M_b` masked frames, each of the K draws is
    uniform (with replacement) over the `M_b - 1` OTHER masked frames of the same row (the
    paper's "uniformly sampled from other masked time steps of the same utterance";
    fairseq's `sample_negatives`: an index drawn from `M_b - 1` and shifted past the
    frame's own). Frames that are not masked, and every frame of a row with fewer than two
    masked frames (no other masked frame to draw), get their own index; `contrastive_valid`
    says which frames have distractors.

    Args:
      mask: bool `[B, T]`.
      num_distractors: K.
      seed: int `[2]`, the stateless seed of the draw.
      uniform: optional float `[B, T, K]` in [0, 1) used instead of a draw from `seed`
        (a replica passes its rows of a draw made for the global batch).
    """
    mask = tf.convert_to_tensor(mask, tf.bool)
    shape = tf.shape(mask)
    if uniform is None:
        uniform = tf.random.stateless_uniform(tf.concat([shape, [int(num_distractors)]], 0),
                                              tf.cast(seed, tf.int32))
    positions, counts, ranks = masked_positions(mask)
    others = tf.maximum(counts - 1, 1)[:, None, None]  # M_b - 1 choices (1 when there is none: unused)
    drawn = tf.minimum(tf.cast(tf.cast(uniform, tf.float32) * tf.cast(others, tf.float32), tf.int32), others - 1)
    drawn += tf.cast(drawn >= ranks[..., None], tf.int32)  # skip the frame's own rank
    rows = tf.gather(positions, drawn, batch_dims=1)  # [B, T, K] frame indices
    own = tf.broadcast_to(tf.range(shape[1])[None, :, None], tf.shape(rows))
    return tf.where(contrastive_valid(mask)[..., None], rows, own)


def contrastive_valid(mask):
    """bool `[B, T]`: the masked frames that have distractors (their row masks >= 2 frames)."""
    mask = tf.convert_to_tensor(mask, tf.bool)
    return mask & (tf.reduce_sum(tf.cast(mask, tf.int32), axis=1, keepdims=True) >= 2)


def wav2vec2_contrastive_terms(context, targets, distractors, mask, temperature=LOGIT_TEMPERATURE, codes=None):
    """wav2vec 2.0's contrastive loss per frame (Baevski et al. 2020, eq. 3):

        L_t = -log( exp(sim(c_t, q_t) / kappa) / sum_{q~ in {q_t} + Q_t} exp(sim(c_t, q~) / kappa) )

    with `sim` the cosine similarity, `c_t` the context network's output at masked frame t
    (projected: `context`), `q_t` the quantised latent of the same frame (projected:
    `targets`), and `Q_t` the K distractors `q_{d}` at the frames `distractors[b, t]` of
    the same utterance (`sample_distractors`). With `codes` (int `[B, T, G]`, the entries
    each frame's quantiser selected), a distractor whose codes equal the positive's in every
    group (so the same quantised vector) is left out of the sum, as fairseq's
    `neg_is_pos`.

    Returns `(losses, correct, valid)`: float32 `[B, T]` (0 where not valid), bool `[B, T]`
    (the positive scored above every distractor: the contrastive accuracy), bool `[B, T]`
    (`contrastive_valid(mask)`: the frames the loss is taken over).
    """
    c = tf.math.l2_normalize(tf.cast(context, tf.float32), axis=-1)
    q = tf.math.l2_normalize(tf.cast(targets, tf.float32), axis=-1)
    similarities = tf.einsum("btf,bsf->bts", c, q) * (1.0 / float(temperature))  # every frame against its row's
    positive = tf.linalg.diag_part(similarities)  # [B, T]
    distractors = tf.cast(distractors, tf.int32)
    negative = tf.gather(similarities, distractors, batch_dims=2)  # [B, T, K]
    if codes is not None:
        codes = tf.cast(codes, tf.int32)
        drawn_codes = tf.gather(codes, distractors, batch_dims=1)  # [B, T, K, G]
        same = tf.reduce_all(tf.equal(drawn_codes, codes[:, :, None, :]), axis=-1)
        negative -= tf.cast(same, tf.float32) * _MASK_VALUE
    logits = tf.concat([positive[..., None], negative], axis=-1)
    valid = contrastive_valid(mask)
    losses = tf.where(valid, tf.reduce_logsumexp(logits, axis=-1) - positive, 0.0)
    correct = valid & (positive > tf.reduce_max(negative, axis=-1))
    return losses, correct, valid
