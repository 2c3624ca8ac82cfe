"""GPT: next-token prediction with a causal Transformer (Radford et al. 2018, 2019).

The text modality's encoder (`keras_ssl.text_encoders`, made causal) reads
`[BOS] t_1 ... t_n [EOS] [PAD]...`; the output layer is the token embedding, tied
(`logits_i = h_i E^T`, GPT-1/2 and Press & Wolf 2017), and the loss of a text is the
mean cross-entropy of its next tokens,

    loss(x) = -1/|T(x)| sum_{i in T(x)} log p(x_{i+1} | x_{<=i}),   T(x) = {i : x_{i+1} != [PAD]},

averaged over the texts of the global batch (each replica returns its texts' sum over
the global batch size). Metrics: `loss` and `token_accuracy` (the next token ranked
first). The `perplexity` evaluation reports exp of the mean cross-entropy over every
next token of the test split (token-weighted), and `bits_per_token`.

The tokenizer (a byte-level BPE) is trained on the training split in the run's prepare
step (`keras_ssl.modalities.text.prepare_tokenizer`); the model keeps it and serves
raw strings: `serving_default` (text -> embedding, the mean of the causal
sequence) and `embed_tokens` (ids -> embedding). Generation and per-token outputs
are for later.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.modalities.text import prepare_tokenizer, run_tokenizer_layer
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.text_encoders import encode_sequence, set_causal, set_dropout, token_embedding
from keras_ssl.tokenizers import PAD_ID


@dataclasses.dataclass
class GPTOptions:
    """GPT's options; the encoder (`--encoder`, `--width_multiplier`) and the text settings
    (`--sequence_length`, `--vocabulary_size`) size the model."""

    dropout: float = option(0.1, "dropout of the embeddings, attention and residual branches (GPT-2's 0.1)",
                            check=lambda v: 0 <= v < 1, requirement="in [0, 1)")


@keras.saving.register_keras_serializable(package="keras_ssl")
class GPT(MethodModel):
    """A causal language model on token ids `[B, L]` (int32, `PAD_ID` after the text).

    Args:
      encoder: a `keras_ssl.text_encoders` encoder (made causal here).
      tokenizer: the `BytePairTokenizer` its ids come from (kept, and served).
      dropout: the encoder's dropout rate (set on its layers).
    """

    SUB_MODELS = ("encoder", "tokenizer")
    TRACKED = ("loss", "token_accuracy")
    MODALITY = "text"

    def __init__(self, encoder, tokenizer, dropout=GPTOptions.dropout, **kwargs):
        super().__init__(**kwargs)
        self.dropout = float(dropout)
        self.encoder = set_dropout(set_causal(encoder, True), self.dropout)
        self.tokenizer = tokenizer
        vocabulary = int(token_embedding(encoder).shape[0])
        if tokenizer.vocabulary_size() > vocabulary:
            raise UserError(f"the tokenizer has {tokenizer.vocabulary_size():,} tokens and the encoder's embedding "
                            f"{vocabulary:,}; build the encoder with vocabulary_size >= the tokenizer's")
        self.build()

    def next_token_terms(self, ids, training=False):
        """`(cross-entropy [B, L-1], correct [B, L-1], counted [B, L-1])` of every next token
        (counted: the target is not padding), in float32."""
        ids = tf.cast(ids, tf.int32)
        sequence = tf.cast(encode_sequence(self.encoder, ids, training=training), tf.float32)
        logits = tf.matmul(sequence[:, :-1], tf.cast(token_embedding(self.encoder), tf.float32), transpose_b=True)
        targets = ids[:, 1:]
        counted = tf.cast(targets != PAD_ID, tf.float32)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32)
        return cross_entropy * counted, correct * counted, counted

    def method_loss(self, data, training):
        ids, _ = split_data(data)
        ids = self.checked_inputs(ids)
        cross_entropy, correct, counted = self.next_token_terms(ids, training)
        tokens = tf.maximum(tf.reduce_sum(counted, axis=1), 1.0)
        per_text = tf.reduce_sum(cross_entropy, axis=1) / tokens
        batch = tf.cast(tf.shape(per_text)[0], tf.float32)
        self.trackers["loss"].update_state(tf.reduce_mean(per_text), sample_weight=batch)
        self.trackers["token_accuracy"].update_state(tf.reduce_sum(correct) / tf.maximum(tf.reduce_sum(counted), 1.0),
                                                     sample_weight=tf.reduce_sum(counted))
        return tf.reduce_sum(per_text) / tf.cast(global_batch_size(tf.shape(per_text)[0]), tf.float32)

    def serving_endpoints(self, input_shape, threshold=None):
        if threshold is not None:
            raise UserError(f"a threshold only applies to models with a verify signature, not {type(self).__name__}")

        def embed(ids):
            return tf.math.l2_normalize(tf.cast(self.representation(ids), tf.float32), axis=-1)

        return (self.input_modality().embedding_endpoints(embed, self.representation_dim(input_shape),
                                                          tokenizer=self.tokenizer) + self.probe_endpoints())


def perplexity(model, ids, batch_size=64):
    """`{"perplexity", "test_nll", "bits_per_token", "test_tokens"}` of `model` on int ids
    `[N, L]`: exp of the mean next-token cross-entropy (nats) over every counted token."""
    step = tf.function(lambda x: [tf.reduce_sum(t) for t in model.next_token_terms(x)[::2]], reduce_retracing=True)
    total, count = 0.0, 0.0
    for start in range(0, len(ids), batch_size):
        nll, counted = step(tf.constant(ids[start:start + batch_size]))
        total, count = total + float(nll), count + float(counted)
    mean = total / max(count, 1.0)
    return {"perplexity": float(np.exp(mean)), "test_nll": mean, "bits_per_token": float(mean / np.log(2.0)),
            "test_tokens": int(count)}


def _perplexity(context):
    from keras_ssl import modalities

    return perplexity(context.model, modalities.get("text").examples(context.dataset.test))


register_evaluation(Evaluation("perplexity", "held-out next-token perplexity (exp of the mean cross-entropy)",
                               _perplexity, ("perplexity", "test_nll", "bits_per_token"), needs_labels=False))


def _build(run, options, encoder, dataset, stage):
    return GPT(encoder, stage.preprocessor, **option_arguments(options, GPT))


def _training_data(run, options, split, stage):
    """Shuffled batches of the training texts' token ids (tokenized once, here)."""
    from keras_ssl.data.text import tokenize_split

    ids = tokenize_split(split, stage.preprocessor).ids
    data = (tf.data.Dataset.from_tensor_slices(ids).shuffle(len(ids), seed=run.seed).repeat()
            .batch(run.batch_size, drop_remainder=True).prefetch(2))
    return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)


register(Method(
    name="gpt", summary="GPT: next-token prediction with a causal Transformer on text (Radford et al. 2018)",
    options=GPTOptions, build=_build, training_data=_training_data, modality="text",
    # GPT-1: Adam at 2.5e-4 with warmup and cosine decay, weight decay 0.01 (AdamW); a batch of
    # 32 texts is ours (a CPU).
    run_defaults=dict(dataset="fortunes", model_dir="runs/gpt", optimizer="adamw", learning_rate=2.5e-4,
                      lr_scaling="none", warmup_epochs=0.5, weight_decay=0.01, batch_size=32),
    evaluations=("probe", "perplexity"),
    prepare=prepare_tokenizer, preprocessor=run_tokenizer_layer,
    # no dropout: one device and two replicas draw other masks (tests/test_distributed_methods.py)
    smoke_options=dict(batch_size=8, sequence_length=32, vocabulary_size=300, dropout=0.0),
))
