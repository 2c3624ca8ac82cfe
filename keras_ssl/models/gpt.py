"""GPT: next-token prediction with a causal Transformer (Radford et al. 2018, 2019).

The text modality's encoder (`keras_ssl.text_encoders`, made causal) reads
`[BOS] t_1 ... t_n [EOS] [PAD]...`; the output layer is the token embedding, tied
(`logits_i = h_i E^T`, GPT-1/2 and Press & Wolf 2017), and the loss of a text is the
mean cross-entropy of its next tokens,

    loss(x) = -1/|T(x)| sum_{i in T(x)} log p(x_{i+1} | x_{<=i}),   T(x) = {i : x_{i+1} != [PAD]},

averaged over the texts of the global batch (each replica returns its texts' sum over
the global batch size). Metrics: `loss` and `token_accuracy` (the next token ranked
first). The `perplexity` evaluation reports exp of the mean cross-entropy over every
next token of the test split (token-weighted), `bits_per_token`, and beside them an
interpolated Kneser-Ney trigram model of the training split's ids predicting the same
tokens (`ngram_perplexity`, `keras_ssl.evaluation.ngram`).

Generation (`generate`): the prompt's ids, its [EOS] dropped, are continued one token at
a time within `sequence_length`, until [EOS] or `max_new_tokens`; each next token is

    greedy:   argmax_w logits(w)
    sampled:  argmax_w (logits(w) / T + g_w),  g_w ~ Gumbel(0, 1)  (= a draw from softmax(logits / T))

over the ordinary tokens and [EOS], the `top_k` largest logits only when `top_k > 0`
(GPT-2's samples: k = 40, Radford et al. 2019), the Gumbel noise of row b at step s drawn
with a stateless op seeded `(seed_b, s)`: the same prompt and seed give the same text,
whatever else is in the batch.

The tokenizer (a byte-level BPE) is trained on the training split in the run's prepare
step (`keras_ssl.modalities.text.prepare_tokenizer`); the model keeps it and serves
raw strings: `serving_default` (text -> embedding, the mean of the causal
sequence), `embed_tokens` (ids -> embedding), `tokenize`, `token_logits`
(`keras_ssl.models.text_model`), `generate` (prompt, seed -> the continuation, sampled
at `sampling_temperature` and `top_k`) and `generate_greedy` (prompt -> the greedy
continuation), detokenized in the graph.
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
from keras_ssl.models.text_model import TextModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.byte_pair import BYTE_OFFSET
from keras_ssl.text_encoders import set_causal, set_dropout
from keras_ssl.tokenizers import EOS_ID, PAD_ID


@dataclasses.dataclass
class GPTOptions:
    """GPT's options; the encoder (`--encoder`, `--width_multiplier`) and the text settings
    (`--sequence_length`, `--vocabulary_size`) size the model."""

    dropout: float = option(0.1, "dropout of the embeddings, attention and residual branches (GPT-2's 0.1)",
                            check=lambda v: 0 <= v < 1, requirement="in [0, 1)")
    sampling_temperature: float = option(1.0, "the logits are divided by this when sampling (1: the model's own "
                                         "distribution); the generate signature's", check=lambda v: v > 0,
                                         requirement="> 0")
    top_k: int = option(40, "generate samples among the k most likely tokens (0: all); GPT-2's samples use 40 "
                        "(Radford et al. 2019)", check=lambda v: v >= 0, requirement=">= 0")
    pack_texts: bool = option(True, "train on the training texts packed end to end into full windows of "
                              "--sequence_length (no padding; GPT-2/3's), not one padded text per row",
                              stored_default=False)
    max_new_tokens: int = option(64, "tokens generate adds at most (within --sequence_length); 64 BPE tokens are "
                                 "about two fortunes' median length", check=lambda v: v >= 1, requirement=">= 1")


@keras.saving.register_keras_serializable(package="keras_ssl")
class GPT(TextModel):
    """A causal language model on token ids `[B, L]` (int32, `PAD_ID` after the text).

    Args:
      encoder: a `keras_ssl.text_encoders` encoder (made causal here).
      tokenizer: the `BytePairTokenizer` its ids come from (kept, and served).
      dropout: the encoder's dropout rate (set on its layers).
      sampling_temperature, top_k, max_new_tokens: what the `generate` signature samples
        with (see the module docstring).
    """

    TRACKED = ("loss", "token_accuracy")
    LOGITS_MEANING = "logits of the next token after each position"

    def __init__(self, encoder, tokenizer, dropout=GPTOptions.dropout,
                 sampling_temperature=GPTOptions.sampling_temperature, top_k=GPTOptions.top_k,
                 max_new_tokens=GPTOptions.max_new_tokens, **kwargs):
        super().__init__(set_dropout(set_causal(encoder, True), float(dropout)), tokenizer, **kwargs)
        self.dropout = float(dropout)
        if sampling_temperature <= 0 or top_k < 0 or max_new_tokens < 1:
            raise UserError(f"GPT samples with sampling_temperature > 0, top_k >= 0 and max_new_tokens >= 1, got "
                            f"{sampling_temperature}, {top_k} and {max_new_tokens}")
        self.sampling_temperature, self.top_k = float(sampling_temperature), int(top_k)
        self.max_new_tokens = int(max_new_tokens)
        self.build()

    def next_token_terms(self, ids, training=False):
        """`(cross-entropy [B, L-1], correct [B, L-1], counted [B, L-1])` of every next token
        (counted: the target is not padding), in float32."""
        ids = tf.cast(ids, tf.int32)
        logits = self.sequence_logits(ids, training=training)[:, :-1]
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

    # -- generation --------------------------------------------------------------

    def generate_ids(self, ids, seeds=None, temperature=None, top_k=None, max_new_tokens=None, greedy=False):
        """int32 `[B, L]` framed prompt ids (the tokenizer's) and int `[B]` seeds -> int32
        `[B, L]`: the generated tokens where they were written, [PAD] elsewhere (see the
        module docstring; `temperature`, `top_k`, `max_new_tokens`: the model's by default)."""
        temperature = self.sampling_temperature if temperature is None else float(temperature)
        top_k = self.top_k if top_k is None else int(top_k)
        steps = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        ids = tf.cast(ids, tf.int32)
        batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
        vocabulary = self.vocabulary_size()
        seeds = tf.zeros([batch], tf.int32) if seeds is None else tf.cast(seeds, tf.int32)
        is_end = ids == EOS_ID
        start = tf.where(tf.reduce_any(is_end, axis=1),
                         tf.argmax(tf.cast(is_end, tf.int32), axis=1, output_type=tf.int32), tf.reduce_sum(tf.cast(ids != PAD_ID, tf.int32), axis=1))
        ids = tf.where(is_end, PAD_ID, ids)
        token = tf.range(vocabulary)
        allowed = (token >= BYTE_OFFSET) | (token == EOS_ID)  # no [PAD] [UNK] [BOS] [MASK]
        positions = tf.range(length)[None]

        def step(s, current, done):
            position = start + s
            active = tf.logical_not(done) & (position < length)
            before = tf.clip_by_value(position - 1, 0, length - 1)
            logits = tf.gather(self.sequence_logits(current), before, batch_dims=1)[:, :vocabulary]
            logits = tf.where(allowed[None], logits, -1e9)
            if greedy:
                chosen = tf.argmax(logits, axis=-1, output_type=tf.int32)
            else:
                logits = logits / temperature
                if 0 < top_k < vocabulary:
                    kth = tf.math.top_k(logits, top_k).values[:, -1:]
                    logits = tf.where(logits < kth, -1e9, logits)
                uniform = tf.map_fn(lambda seed: tf.random.stateless_uniform([vocabulary], tf.stack([seed, s]),
                                                                             minval=1e-7, maxval=1.0),
                                    seeds, fn_output_signature=tf.float32)
                chosen = tf.argmax(logits - tf.math.log(-tf.math.log(uniform)), axis=-1, output_type=tf.int32)
            write = active[:, None] & (positions == position[:, None])
            current = tf.where(write, chosen[:, None], current)
            done = done | (active & (chosen == EOS_ID)) | (position + 1 >= length)
            return s + 1, current, done

        _, out, _ = tf.while_loop(lambda s, current, done: (s < steps) & tf.logical_not(tf.reduce_all(done)), step,
                                  (tf.constant(0), ids, start >= length))
        return tf.where(positions >= start[:, None], out, PAD_ID)

    def generate(self, prompts, seeds=None, temperature=None, top_k=None, max_new_tokens=None, greedy=False):
        """The continuations (a list of str) of `prompts` (str or a list of them), one per
        seed (int or a list; default 0 each); see `generate_ids`."""
        prompts = [prompts] if isinstance(prompts, (str, bytes)) else list(prompts)
        seeds = [0] * len(prompts) if seeds is None else ([seeds] * len(prompts) if np.ndim(seeds) == 0 else seeds)
        ids = self.tokenizer(prompts)
        out = self.generate_ids(ids, tf.constant(seeds, tf.int32), temperature, top_k, max_new_tokens, greedy)
        return [b.decode("utf-8", "replace") for b in self.tokenizer.detokenize(out).numpy()]

    def serving_endpoints(self, input_shape, threshold=None):
        from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput

        prompt = ServingInput("prompt", "text", tokenizer=self.tokenizer)
        text = (ServingOutput("text", "string", (), "the continuation of the prompt (UTF-8 bytes; [EOS] ends it)"),)
        return super().serving_endpoints(input_shape, threshold) + [
            Endpoint("generate", (prompt, ServingInput("seed", "seeds")), text,
                     lambda ids, seeds: {"text": self.tokenizer.detokenize(self.generate_ids(ids, seeds))}),
            Endpoint("generate_greedy", (prompt,), text,
                     lambda ids: {"text": self.tokenizer.detokenize(self.generate_ids(ids, greedy=True))})]


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
    """The model's test perplexity beside an interpolated Kneser-Ney trigram model of the
    training split's ids on the same tokens (`keras_ssl.evaluation.ngram`)."""
    from keras_ssl import modalities
    from keras_ssl.evaluation.ngram import ngram_baseline

    text = modalities.get("text")
    test = text.examples(context.dataset.test)
    results = perplexity(context.model, test)
    results.update(ngram_baseline(text.examples(context.dataset.train), test, context.model.vocabulary_size()))
    return results


register_evaluation(Evaluation("perplexity", "held-out next-token perplexity (exp of the mean cross-entropy) "
                               "against an interpolated Kneser-Ney n-gram model of the training ids", _perplexity,
                               ("perplexity", "test_nll", "bits_per_token", "ngram_perplexity", "ngram_nll"),
                               needs_labels=False))


def _build(run, options, encoder, dataset, stage):
    return GPT(encoder, stage.preprocessor, **option_arguments(options, GPT))


def _training_data(run, options, split, stage):
    """Batches of the training texts' token ids (tokenized once, here): packed windows, a
    new text order each epoch (`keras_ssl.data.text.packed_windows`), with `pack_texts`;
    else one text per row, shuffled."""
    from keras_ssl.data.text import packed_windows, tokenize_split

    ids = tokenize_split(split, stage.preprocessor).ids
    if not options.pack_texts:
        data = (tf.data.Dataset.from_tensor_slices(ids).shuffle(len(ids), seed=run.seed).repeat()
                .batch(run.batch_size, drop_remainder=True).prefetch(2))
        return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)
    windows = packed_windows(ids, ids.shape[1], seed=run.seed, copies=run.epochs)
    steps = epoch_steps(windows[:len(windows) // run.epochs], run.batch_size)
    data = tf.data.Dataset.from_tensor_slices(windows).repeat().batch(run.batch_size, drop_remainder=True).prefetch(2)
    return TrainingData(data, steps, run.batch_size, unit="windows")  # of sequence_length tokens


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
