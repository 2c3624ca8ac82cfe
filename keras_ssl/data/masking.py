"""Masks for masked-prediction pretext tasks over token sequences (BERT's, and more to come).

    from keras_ssl.data.masking import mlm_mask, mlm_batches
    inputs, targets = mlm_mask(ids, seed=[0, step], vocabulary_size=4096)
    data = mlm_batches(ids, batch_size=32, vocabulary_size=4096, seed=0)   # tf.data of (inputs, targets)

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
split). Issue 34 adds span masks for other methods to this module.
"""

import numpy as np
import tensorflow as tf

from keras_ssl.byte_pair import BYTE_OFFSET
from keras_ssl.tokenizers import BOS_ID, EOS_ID, MASK_ID, PAD_ID

# Devlin et al. 2019, section 3.1: 15% of the tokens selected; of those 80% [MASK], 10% random, 10% kept
SELECT_PROB, MASK_SHARE, RANDOM_SHARE = 0.15, 0.8, 0.1


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

    return data.map(corrupt, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
