"""BERT: masked-token prediction with a bidirectional Transformer (Devlin et al. 2019).

The text modality's encoder (`keras_ssl.text_encoders`, bidirectional) reads a corrupted
text `[BOS] t_1 ... t_n [EOS] [PAD]...` (`keras_ssl.data.masking.mlm_mask`: 15% of the
tokens selected, never [PAD]/[BOS]/[EOS]; of those 80% [MASK], 10% a random token, 10%
kept), and predicts the original token at every selected position through the output
layer tied to the token embedding (`logits_i = h_i E^T`, as GPT; BERT ties it too). The
loss of a text is the mean cross-entropy over its selected positions S(x),

    loss(x) = -1/|S(x)| sum_{i in S(x)} log p(x_i | x~),      x~ the corrupted text,

averaged over the texts of the global batch (each replica returns its texts' sum over
the global batch size; a text with nothing selected adds 0). Metrics: `loss` and
`masked_accuracy` (the original token ranked first at a selected position). No
next-sentence prediction: RoBERTa (Liu et al. 2019) found it unneeded, and a fortune is
one text.

The batches are masked in the input pipeline (`keras_ssl.data.masking.mlm_batches`, a
stateless seed per batch), so one device and several replicas see the same corruption;
a batch is `(inputs, targets)`, `targets` the original ids at the selected positions and
[PAD] elsewhere.

The `masked_lm` evaluation masks the test split once (seed 0) and reports the masked-token
accuracy and mean cross-entropy (nats, token-weighted) beside a unigram baseline: the
training split's token frequencies predicting every masked token
(`keras_ssl.evaluation.ngram.unigram_baseline`). Served: `serving_default` (strings ->
the pooled embedding), `embed_tokens`, `tokenize` and `token_logits` (ids -> logits of the
token at every position), `keras_ssl.models.text_model`.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.modalities.text import prepare_tokenizer, run_tokenizer_layer
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.models.text_model import TextModel
from keras_ssl.text_encoders import set_causal, set_dropout
from keras_ssl.tokenizers import PAD_ID
from keras_ssl.errors import UserError


@dataclasses.dataclass
class BERTOptions:
    """BERT's options; the encoder (`--encoder`, `--width_multiplier`) and the text settings
    (`--sequence_length`, `--vocabulary_size`) size the model."""

    dropout: float = option(0.1, "dropout of the embeddings, attention and residual branches (BERT's 0.1)",
                            check=lambda v: 0 <= v < 1, requirement="in [0, 1)")
    mask_prob: float = option(0.15, "share of each text's tokens selected for prediction (BERT's 15%, Devlin et "
                              "al. 2019); of those 80% become [MASK], 10% a random token, 10% stay",
                              check=lambda v: 0 < v < 1, requirement="in (0, 1)")
    pack_texts: bool = option(True, "train on the training texts packed end to end into full windows of "
                              "--sequence_length (no padding; RoBERTa's FULL-SENTENCES inputs), not one padded text "
                              "per row", stored_default=False)


@keras.saving.register_keras_serializable(package="keras_ssl")
class BERT(TextModel):
    """A masked language model on token ids `[B, L]` (int32, `PAD_ID` after the text).

    Trains on `(inputs, targets)` batches (`keras_ssl.data.masking.mlm_batches`); its
    representation is the mean of the bidirectional sequence over the text's tokens.

    Args:
      encoder: a `keras_ssl.text_encoders` encoder (bidirectional here).
      tokenizer: the `BytePairTokenizer` its ids come from (kept, and served).
      dropout: the encoder's dropout rate (set on its layers).
      mask_prob: the share selected by `mlm_batches` in the method's pipeline (kept with
        the model: what it trained with).
    """

    TRACKED = ("loss", "masked_accuracy")
    LOGITS_MEANING = "logits of the token at each position (a [MASK] or any other)"

    def __init__(self, encoder, tokenizer, dropout=BERTOptions.dropout, mask_prob=BERTOptions.mask_prob, **kwargs):
        super().__init__(set_dropout(set_causal(encoder, False), float(dropout)), tokenizer, **kwargs)
        self.dropout, self.mask_prob = float(dropout), float(mask_prob)
        self.build()

    def masked_terms(self, inputs, targets, training=False):
        """`(cross-entropy [B, L], correct [B, L], selected [B, L])` at every position,
        zero where nothing was selected (`targets == PAD_ID`), float32."""
        targets = tf.cast(targets, tf.int32)
        logits = self.sequence_logits(inputs, training=training)
        selected = tf.cast(targets != PAD_ID, tf.float32)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32)
        return cross_entropy * selected, correct * selected, selected

    def method_loss(self, data, training):
        inputs, targets = split_data(data)
        if targets is None:
            raise UserError("BERT trains on (inputs, targets) batches of masked ids: "
                            "keras_ssl.data.masking.mlm_batches(ids, batch_size, vocabulary_size)")
        inputs = self.checked_inputs(inputs)
        cross_entropy, correct, selected = self.masked_terms(inputs, targets, training)
        per_text = tf.reduce_sum(cross_entropy, axis=1) / tf.maximum(tf.reduce_sum(selected, axis=1), 1.0)
        batch = tf.cast(tf.shape(per_text)[0], tf.float32)
        self.trackers["loss"].update_state(tf.reduce_mean(per_text), sample_weight=batch)
        self.trackers["masked_accuracy"].update_state(
            tf.reduce_sum(correct) / tf.maximum(tf.reduce_sum(selected), 1.0), sample_weight=tf.reduce_sum(selected))
        return tf.reduce_sum(per_text) / tf.cast(global_batch_size(tf.shape(per_text)[0]), tf.float32)


def masked_lm_metrics(model, ids, seed=0, batch_size=64):
    """`{"masked_accuracy", "masked_loss", "masked_tokens"}` of `model` on int ids `[N, L]`
    masked once by `mlm_mask` (seed `[seed, batch number]`, the model's `mask_prob`):
    accuracy and mean cross-entropy (nats) over every selected token; also returns the
    targets (for a baseline on the same tokens)."""
    from keras_ssl.data.masking import mlm_mask

    vocabulary = model.vocabulary_size()

    @tf.function(reduce_retracing=True)
    def step(x, index):
        inputs, targets = mlm_mask(x, tf.stack([tf.constant(seed, tf.int32), index]), vocabulary, model.mask_prob)
        terms = model.masked_terms(inputs, targets)
        return [tf.reduce_sum(t) for t in terms] + [targets]

    total, right, count, all_targets = 0.0, 0.0, 0.0, []
    for number, start in enumerate(range(0, len(ids), batch_size)):
        nll, correct, selected, targets = step(tf.constant(ids[start:start + batch_size]), tf.constant(number))
        total, right, count = total + float(nll), right + float(correct), count + float(selected)
        all_targets.append(targets.numpy())
    return ({"masked_accuracy": right / max(count, 1.0), "masked_loss": total / max(count, 1.0),
             "masked_tokens": int(count)},
            np.concatenate(all_targets) if all_targets else np.zeros((0, 0), np.int32))


def _masked_lm(context):
    """Masked-token accuracy and loss on the test split, beside the training split's
    unigram frequencies predicting the same masked tokens."""
    from keras_ssl import modalities
    from keras_ssl.evaluation.ngram import unigram_baseline

    text = modalities.get("text")
    results, targets = masked_lm_metrics(context.model, text.examples(context.dataset.test))
    results.update(unigram_baseline(text.examples(context.dataset.train), targets, context.model.vocabulary_size()))
    return results


register_evaluation(Evaluation("masked_lm", "masked-token accuracy and cross-entropy on the test split against the "
                               "training split's unigram frequencies", _masked_lm,
                               ("masked_accuracy", "masked_loss", "unigram_masked_accuracy", "unigram_masked_loss"),
                               needs_labels=False))


def _build(run, options, encoder, dataset, stage):
    return BERT(encoder, stage.preprocessor, **option_arguments(options, BERT))


def _training_data(run, options, split, stage):
    """`(inputs, targets)` batches of the training texts' ids (tokenized once, here),
    masked by `mlm_mask` in the pipeline, a new mask each batch. With `pack_texts`, the
    texts packed end to end into full windows, a new text order each epoch
    (`keras_ssl.data.text.packed_windows`, as GPT's; RoBERTa's FULL-SENTENCES inputs, Liu
    et al. 2019, which train as well as one document per row and waste no step on
    padding); else one text per row, shuffled."""
    from keras_ssl.data.masking import mlm_batches
    from keras_ssl.data.text import packed_windows, tokenize_split

    ids = tokenize_split(split, stage.preprocessor).ids
    vocabulary_size = stage.preprocessor.vocabulary_size()
    if not options.pack_texts:
        data = mlm_batches(ids, run.batch_size, vocabulary_size, seed=run.seed, select_prob=options.mask_prob)
        return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)
    windows = packed_windows(ids, ids.shape[1], seed=run.seed, copies=run.epochs)
    steps = epoch_steps(windows[:len(windows) // run.epochs], run.batch_size)
    data = mlm_batches(windows, run.batch_size, vocabulary_size, seed=run.seed, shuffle=False,
                       select_prob=options.mask_prob)  # each copy is already in its own order
    return TrainingData(data, steps, run.batch_size, unit="windows")  # of sequence_length tokens


register(Method(
    name="bert", summary="BERT: masked-token prediction with a bidirectional Transformer on text (Devlin et al. 2019)",
    options=BERTOptions, build=_build, training_data=_training_data, modality="text",
    # BERT: Adam at 1e-4, warmup, weight decay 0.01 (AdamW), Devlin et al. 2019 appendix A.2; a batch
    # of 32 texts is ours (a CPU; BERT's 256 x 512 tokens is beyond it)
    run_defaults=dict(dataset="fortunes", model_dir="runs/bert", optimizer="adamw", learning_rate=1e-4,
                      lr_scaling="none", warmup_epochs=0.5, weight_decay=0.01, batch_size=32),
    evaluations=("probe", "masked_lm"),
    prepare=prepare_tokenizer, preprocessor=run_tokenizer_layer,
    # no dropout: one device and two replicas draw other masks (tests/test_distributed_methods.py)
    smoke_options=dict(batch_size=8, sequence_length=32, vocabulary_size=300, dropout=0.0),
))
