"""Masks for masked-prediction pretext tasks: BERT's over token sequences, and spans of
frames (wav2vec 2.0's, HuBERT's).

    from keras_ssl.data.masking import mlm_mask, mlm_batches, span_mask
    inputs, targets = mlm_mask(ids, seed=[0, step], vocabulary_size=4096)
    data = mlm_batches(ids, batch_size=32, vocabulary_size=4096, seed=0)   # tf.data of (inputs, targets)
    masked = span_mask(32, 49, mask_prob=0.065, span=10, seed=[0, step])   # bool [32, 49]

`mlm_mask` is BERT's masked-language-model corruption (Devlin et al. 2019, section 3.1
and appendix A.1; the rule of Google's `create_pretraining_data.py`):

* in each text, `n = max(1, floor(select_prob * m + 0.5))` of its `m` selectable positions are
  selected uniformly at random without replacement (`select_prob` 0.15); a position is
  selectable when its token is none of [PAD], [BOS], [EOS] (the frame; BERT never masks
  [CLS]/[SEP]); a text with no selectable position has none selected;
* each selected position independently becomes [MASK] with probability `mask_share`
  (0.8), a random token with probability `random_share` (0.1), drawn uniformly from the
  ordinary tokens `[BYTE_OFFSET, vocabulary_size)` (BERT draws from its whole vocabulary;
  we leave out the five special tokens, which a text never holds), and stays as it is
  otherwise (0.1; a random token may also equal the original, as in BERT);
* `targets` holds the original token at every selected position and [PAD] (0) elsewhere:
  [PAD] is never selected, so `targets != PAD_ID` is the selection, and the loss is taken
  there only.

Everything is drawn with stateless random ops from `seed` (int `[2]`): the same ids and
seed give the same mask, on any number of replicas (the batch is masked before it is
split).

`span_mask` is wav2vec 2.0's mask of latent frames (Baevski et al. 2020, section 3.1): every
frame independently starts a span with probability `mask_prob` (0.065) and a span masks the
`span` (10) frames from its start on; spans may overlap. See its docstring for the end of
the sequence and the share of frames masked (about 49%).
"""

import numpy as np
import tensorflow as tf

from keras_ssl.byte_pair import BYTE_OFFSET
from keras_ssl.data.finish import finished
from keras_ssl.tokenizers import BOS_ID, EOS_ID, MASK_ID, PAD_ID

# Devlin et al. 2019, section 3.1: 15% of the tokens selected; of those 80% [MASK], 10% random, 10% kept
SELECT_PROB, MASK_SHARE, RANDOM_SHARE = 0.15, 0.8, 0.1
# Baevski et al. 2020, section 4.2: p = 0.065 of the frames start a span of M = 10 frames
SPAN_MASK_PROB, SPAN_LENGTH = 0.065, 10


def selectable(ids):
    """bool, the shape of `ids`: the positions a masked-prediction task may select (not
    [PAD], [BOS] or [EOS])."""
    return (ids != PAD_ID) & (ids != BOS_ID) & (ids != EOS_ID)


def mlm_mask(ids, seed, vocabulary_size, select_prob=SELECT_PROB, mask_share=MASK_SHARE,
             random_share=RANDOM_SHARE):
    """BERT's corruption of int token ids `[B, L]` (see the module docstring) ->
    `(inputs, targets)`, both int32 `[B, L]`: `inputs` the corrupted ids, `targets` the
    original id at each selected position and `PAD_ID` elsewhere.

    Args:
      ids: int `[B, L]` token ids, `PAD_ID` after each text.
      seed: int `[2]` (a stateless seed: the same seed, the same mask).
      vocabulary_size: random replacements are drawn from `[BYTE_OFFSET, vocabulary_size)`.
      select_prob, mask_share, random_share: 0.15, 0.8 and 0.1 (Devlin et al. 2019).
    """
    ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    allowed = selectable(ids)
    count = tf.reduce_sum(tf.cast(allowed, tf.float32), axis=1)
    # n = max(1, floor(0.15 m + 0.5)): rounded half up (BERT's script ran on Python 2's round)
    chosen = tf.where(count > 0, tf.maximum(1.0, tf.floor(select_prob * count + 0.5)), 0.0)
    # a uniformly random order of the selectable positions: rank of each position's score
    scores = tf.random.stateless_uniform(tf.shape(ids), seeds[0])
    scores = tf.where(allowed, scores, 2.0)  # unselectable positions sort last
    order = tf.argsort(scores, axis=1, stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    selected = allowed & (tf.cast(rank, tf.float32) < chosen[:, None])
    action = tf.random.stateless_uniform(tf.shape(ids), seeds[1])
    random_ids = tf.random.stateless_uniform(tf.shape(ids), seeds[2], minval=BYTE_OFFSET,
                                             maxval=int(vocabulary_size), dtype=tf.int32)
    replaced = tf.where(action < mask_share, MASK_ID, tf.where(action < mask_share + random_share, random_ids, ids))
    inputs = tf.where(selected, replaced, ids)
    targets = tf.where(selected, ids, PAD_ID)
    return inputs, targets


def mlm_batches(ids, batch_size, vocabulary_size, seed=0, shuffle=True, repeat=True, drop_remainder=True, **rules):
    """A `tf.data` pipeline of `(inputs, targets)` batches of int32 ids `[N, L]` masked by
    `mlm_mask` (each batch with its own stateless seed `[seed, batch number]`, so a new
    mask every time a text comes back; `rules`: `mlm_mask`'s probabilities)."""
    ids = np.asarray(ids, np.int32)
    data = tf.data.Dataset.from_tensor_slices(ids)
    if shuffle:
        data = data.shuffle(len(ids), seed=seed)
    if repeat:
        data = data.repeat()
    data = data.batch(batch_size, drop_remainder=drop_remainder).enumerate()
    seed = int(seed)

    def corrupt(index, batch):
        return mlm_mask(batch, tf.stack([tf.constant(seed, tf.int32), tf.cast(index, tf.int32)]), vocabulary_size,
                        **rules)

    return finished(data.map(corrupt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), 2)


def stateless_seed(seed):
    """An int32 `[2]` stateless seed from a python int (`[seed, 0]`), a pair, or an int tensor
    of shape `[]` or `[2]`."""
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int32)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int32)])
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(f"a seed is an int or a pair of ints, got shape {seed.shape}")
    return tf.reshape(seed, [2])


def span_mask(batch_size, length, mask_prob=SPAN_MASK_PROB, span=SPAN_LENGTH, seed=0):
    """wav2vec 2.0's span mask (Baevski et al. 2020, section 3.1): bool `[batch_size, length]`.

    Every frame t of every row independently starts a span with probability `mask_prob`
    (the paper's p = 0.065: the probability per frame, as in the paper's text, not
    fairseq's `mask_prob` = 0.65, which fairseq divides by the span length to count spans);
    a span started at t masks frames t .. t + span - 1; spans may overlap. **The end of
    the sequence**: any frame may start a span, and a span starting fewer than `span`
    frames before the end is cut at `length` (fairseq instead draws starts only where a
    whole span fits). A frame is therefore masked when a span starts at one of the
    `min(t + 1, span)` frames ending at it:

        P(t masked) = 1 - (1 - p)^min(t + 1, span)

    i.e. 1 - 0.935^10 = 48.9% from frame 9 on (the paper's "about 49%"), less in the
    first `span - 1` frames (6.5% at frame 0); 45% of a 1 s clip's 49 frames on
    average. A row may have no masked frame at all (0.935^49 = 3.7% of 1 s clips).

    Args:
      batch_size, length: python ints or int scalars (tensors).
      mask_prob: the probability that a frame starts a span, in [0, 1].
      span: frames per span, >= 1 (the paper's M = 10).
      seed: a python int, a pair of ints, or an int tensor of shape `[]` or `[2]`: a
        stateless seed, so the same seed gives the same mask (on any machine and any
        number of replicas: mask the global batch, then take a replica's rows).

    Returns:
      A `tf.Tensor` of dtype bool, `[batch_size, length]` (`.numpy()` for NumPy).
    """
    if not 0.0 <= float(mask_prob) <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if int(span) < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    shape = tf.stack([tf.cast(batch_size, tf.int32), tf.cast(length, tf.int32)])
    starts = tf.cast(tf.random.stateless_uniform(shape, stateless_seed(seed)) < float(mask_prob), tf.int32)
    # frame t is masked when a span starts in [t - span + 1, t]: a difference of running counts
    counts = tf.cumsum(starts, axis=1)
    before = tf.pad(counts, [[0, 0], [int(span), 0]])[:, :-int(span)]  # the count up to t - span
    return counts - before > 0
