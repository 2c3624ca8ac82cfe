"""Serving input kinds of sequence models: `tokens` (int ids) and `text` (strings,
tokenized inside the SavedModel by the endpoint's `WordTokenizer`, whose
vocabulary the export carries as the asset `assets/vocabulary.txt`).

Both decode to int32 `[batch, length]` token ids, which a language model over
text or a prior over a VQ-VAE's codes takes alike, so neither belongs to one
modality (`modality = None`, as the generative kinds).
"""

import numpy as np

from keras_ssl.modalities.input_kinds import InputKind, in_order, refuse, register_input_kind

# Sentences and ids a test request holds: fixed, so that two calls agree.
_TEST_SEED = 4321
_TEST_TEXTS = ("the cat sat on the mat.", "A dog, a cat and a mouse!", "unknown zyzzyva words", "")
# The longest string `text` takes: a bound on the work one request can ask for.
MAX_TEXT_BYTES = 100_000


def _length(serving_input):
    return serving_input.shape[0]


class TokenIds(InputKind):
    """`tokens`: int64 `[batch, L]` token ids, each in `[0, vocabulary_size)` (`L` from
    `ServingInput.shape=(L,)`, or `(None,)` for any length); the function receives
    them as int32."""

    name = "tokens"

    def check(self, serving_input):
        if not serving_input.shape or len(serving_input.shape) != 1 or not serving_input.vocabulary_size:
            raise ValueError(f"the tokens input {serving_input.name!r} needs its length and vocabulary size, e.g. "
                             "ServingInput(name, 'tokens', shape=(L,), vocabulary_size=V) (L may be None)")

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None, _length(serving_input)], tf.int64, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        import tensorflow as tf

        size = serving_input.vocabulary_size
        outside = tf.reduce_any((tensor < 0) | (tensor >= size), axis=1)
        checks = in_order(lambda: refuse(outside, f"{endpoint_name}: token ids must be in [0, {size})",
                                         "send ids of the model's vocabulary"))
        with tf.control_dependencies(checks):
            return tf.cast(tensor, tf.int32)

    def describe(self, input_shape, serving_input):
        length = _length(serving_input) or "L"
        return f"int64 [batch, {length}] token ids in [0, {serving_input.vocabulary_size})"

    def warmup_value(self, input_shape, serving_input):
        return np.zeros([1, _length(serving_input) or 1], np.int64)

    def request_value(self, examples, input_shape, serving_input):
        length = _length(serving_input) or 8
        rng = np.random.default_rng(_TEST_SEED)
        return rng.integers(0, serving_input.vocabulary_size, (len(examples), length), dtype=np.int64)

    def function_input(self, examples, input_shape, serving_input):
        return self.request_value(examples, input_shape, serving_input).astype(np.int32)

    def bad_value(self, examples, input_shape, serving_input):
        value = self.request_value(examples[:2], input_shape, serving_input)
        value[1, 0] = serving_input.vocabulary_size  # one past the vocabulary
        return value


class Text(InputKind):
    """`text`: tf.string `[batch]` of UTF-8 text, at most `MAX_TEXT_BYTES` each,
    tokenized in the graph by `ServingInput.tokenizer` (a
    `keras_ssl.tokenizers.WordTokenizer` or `keras_ssl.byte_pair.BytePairTokenizer`
    with a `sequence_length`): the function
    receives int32 `[batch, sequence_length]` ids."""

    name = "text"
    encoded = True

    def check(self, serving_input):
        tokenizer = serving_input.tokenizer
        if tokenizer is None or getattr(tokenizer, "sequence_length", None) is None:
            raise ValueError(f"the text input {serving_input.name!r} needs a tokenizer with a sequence_length, "
                             "e.g. ServingInput(name, 'text', tokenizer=WordTokenizer(vocabulary, "
                             "sequence_length=L))")

    def trackables(self, serving_input):
        return [serving_input.tokenizer]  # its lookup tables, and the vocabulary asset

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None], tf.string, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        import tensorflow as tf

        def not_utf8():  # made after the length check passed: the bound holds for this work too
            clean = tf.strings.unicode_transcode(tensor, "UTF-8", "UTF-8", errors="replace",
                                                 replacement_char=0xFFFD)
            return refuse(tf.logical_not(tf.equal(clean, tensor)), f"{endpoint_name}: texts that are not valid "
                          "UTF-8", "send text encoded as UTF-8")

        checks = in_order(
            lambda: refuse(tf.strings.length(tensor) > MAX_TEXT_BYTES, f"{endpoint_name}: texts over "
                           f"{MAX_TEXT_BYTES:,} bytes", "send shorter texts"),
            not_utf8)
        with tf.control_dependencies(checks):
            return serving_input.tokenizer(tf.identity(tensor))

    def describe(self, input_shape, serving_input):
        tokenizer = serving_input.tokenizer
        if hasattr(tokenizer, "describe"):  # a tokenizer that says what it does (keras_ssl.byte_pair)
            return f"string [batch] UTF-8 text (at most {MAX_TEXT_BYTES:,} bytes each), tokenized in the graph: " \
                + tokenizer.describe()
        return (f"string [batch] UTF-8 text (at most {MAX_TEXT_BYTES:,} bytes each), tokenized in the graph: "
                "lowercased, split into words and punctuation marks, looked up in the "
                f"{tokenizer.vocabulary_size():,}-token vocabulary (assets/vocabulary.txt; unknown words: [UNK]), "
                f"padded with [PAD] or cut to {tokenizer.sequence_length} ids")

    def warmup_value(self, input_shape, serving_input):
        return [b"warm up"]

    def request_value(self, examples, input_shape, serving_input):
        return [_TEST_TEXTS[i % len(_TEST_TEXTS)].encode("utf-8") for i in range(len(examples))]

    def function_input(self, examples, input_shape, serving_input):
        texts = [t.decode("utf-8") for t in self.request_value(examples, input_shape, serving_input)]
        return serving_input.tokenizer(texts).numpy()

    def bad_value(self, examples, input_shape, serving_input):
        return [b"fine text", b"caf\xe9 in latin-1"]


register_input_kind(TokenIds())
register_input_kind(Text())
