"""Tokenizers as Keras layers that carry their vocabulary.

`WordTokenizer` turns strings into int token ids inside the graph, so that a
SavedModel takes raw text (the `text` serving input kind,
`keras_ssl.modalities.token_kinds`), and its vocabulary travels with it: in
the layer's config (a `.keras` file) and, exported, as the SavedModel asset
`assets/vocabulary.txt` (one token per line, the line number is the id) that
its lookup table is initialised from.

    from keras_ssl.tokenizers import WordTokenizer, word_vocabulary
    vocabulary = word_vocabulary(["The cat sat.", "The dog ran!"], max_size=1000)
    tokenizer = WordTokenizer(vocabulary, sequence_length=8)
    tokenizer(["the cat ran."])   # int32 [1, 8]: the, cat, ran, ., then [PAD] (0)
    tokenizer.detokenize([[5, 6, 0]])

The split is the same in the graph and in `word_vocabulary` (one definition,
`split_words`): Unicode lowercase, every character that is neither a letter,
a digit nor a space becomes a token of its own, then a split on whitespace
(BERT's basic tokenizer does the same, Devlin et al. 2019, without its accent
stripping). Pure TensorFlow ops (no tensorflow-text), so that any TF Serving
build serves it.
"""

import atexit
import collections
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_ssl.errors import UserError

# Ids 0-4, in this order, in every vocabulary: padding (0, so that a zero-padded batch is
# padding), unknown words, the ends of a sequence and BERT's mask token.
PAD, UNK, BOS, EOS, MASK = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, MASK)
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = range(len(SPECIAL_TOKENS))
VOCABULARY_ASSET = "vocabulary.txt"

_SEPARATE = r"([^\pL\pN\s])"  # RE2: one character that is not a letter, a digit or a space


def split_words(texts, lowercase=True):
    """tf.string `[B]` -> ragged tf.string `[B, (words)]`: words and punctuation marks."""
    texts = tf.convert_to_tensor(texts, tf.string)
    if lowercase:
        texts = tf.strings.lower(texts, encoding="utf-8")
    return tf.strings.split(tf.strings.regex_replace(texts, _SEPARATE, r" \1 "))


def word_vocabulary(texts, max_size=10000, min_count=1, lowercase=True, batch_size=4096):
    """The vocabulary a `WordTokenizer` takes: `SPECIAL_TOKENS`, then the words of
    `texts` (an iterable of str) seen at least `min_count` times, most frequent
    first (ties in first-seen order), `max_size` tokens in all."""
    if max_size <= len(SPECIAL_TOKENS):
        raise UserError(f"a vocabulary needs more than the {len(SPECIAL_TOKENS)} special tokens, got max_size="
                        f"{max_size}")
    counts = collections.Counter()
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        words = split_words(texts[start:start + batch_size], lowercase).flat_values.numpy()
        counts.update(w.decode("utf-8") for w in words)
    words = [w for w, n in counts.most_common() if n >= min_count and w not in SPECIAL_TOKENS]
    return list(SPECIAL_TOKENS) + words[:max_size - len(SPECIAL_TOKENS)]


_VOCABULARY_DIR = None


def _vocabulary_file(vocabulary):
    """`vocabulary` written one token per line to a file of this process (removed at
    exit): what the lookup tables are initialised from, and what an export copies
    into the SavedModel's assets."""
    global _VOCABULARY_DIR
    if _VOCABULARY_DIR is None:
        _VOCABULARY_DIR = tempfile.mkdtemp(prefix="keras_ssl-vocabulary-")
        atexit.register(shutil.rmtree, _VOCABULARY_DIR, True)
    folder = tempfile.mkdtemp(dir=_VOCABULARY_DIR)
    path = os.path.join(folder, VOCABULARY_ASSET)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary) + "\n")
    return path


def producible(token, lowercase=True):
    """True when `split_words` can give `token`: one character that is neither a
    letter, a digit nor a space, or a run of letters and digits (lowercase when
    the tokenizer lowercases)."""
    import unicodedata

    def word_char(c):
        return unicodedata.category(c)[0] in "LN"

    if len(token) == 1 and not word_char(token) and not token.isspace():
        return True
    return all(word_char(c) for c in token) and (not lowercase or token == token.lower())


def _check_vocabulary(vocabulary, lowercase=True):
    vocabulary = [str(token) for token in vocabulary]
    if tuple(vocabulary[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise UserError(f"a vocabulary starts with the special tokens {', '.join(SPECIAL_TOKENS)} (ids 0-"
                        f"{len(SPECIAL_TOKENS) - 1}); build it with keras_ssl.tokenizers.word_vocabulary")
    seen = set()
    for token in vocabulary:
        if not token or token != token.strip() or any(c.isspace() for c in token):
            raise UserError(f"vocabulary token {token!r} is empty or holds white space")
        if token in seen:
            raise UserError(f"vocabulary token {token!r} appears twice")
        if token not in SPECIAL_TOKENS and not producible(token, lowercase):
            raise UserError(f"vocabulary token {token!r} can never come out of the split (lowercased words of "
                            "letters and digits, or one punctuation mark); build the vocabulary with "
                            "keras_ssl.tokenizers.word_vocabulary")
        seen.add(token)
    return vocabulary


@keras.saving.register_keras_serializable(package="keras_ssl")
class WordTokenizer(keras.layers.Layer):
    """Strings -> int32 token ids `[B, sequence_length]` (padded with `PAD_ID` or
    cut), or ragged `[B, (tokens)]` without a `sequence_length`.

    Args:
      vocabulary: list of tokens, `SPECIAL_TOKENS` first (`word_vocabulary`
        builds one); a word not in it becomes `UNK_ID`.
      sequence_length: ids per string; None keeps every token (ragged).
      add_ends: frame each string with `BOS_ID` ... `EOS_ID` (a language
        model's start and stop; kept within `sequence_length`).
      lowercase: Unicode lowercase before the lookup.
    """

    def __init__(self, vocabulary, sequence_length=None, add_ends=False, lowercase=True, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        self.vocabulary = _check_vocabulary(vocabulary, lowercase)
        if sequence_length is not None and sequence_length < 1 + 2 * bool(add_ends):
            raise UserError(f"sequence_length must leave room for a token, got {sequence_length}")
        self.sequence_length = sequence_length
        self.add_ends = bool(add_ends)
        self.lowercase = bool(lowercase)
        path = _vocabulary_file(self.vocabulary)
        whole_line, line_number = tf.lookup.TextFileIndex.WHOLE_LINE, tf.lookup.TextFileIndex.LINE_NUMBER
        self._token_to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(path, tf.string, whole_line, tf.int64, line_number), UNK_ID)
        self._id_to_token = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(path, tf.int64, line_number, tf.string, whole_line), UNK)
        self.built = True  # no weights: ready to be exported as it is

    def vocabulary_size(self):
        return len(self.vocabulary)

    def get_vocabulary(self):
        return list(self.vocabulary)

    def __call__(self, texts, *args, **kwargs):
        if isinstance(texts, (str, bytes)):  # one string: a batch of one
            texts = [texts]
        if isinstance(texts, (list, tuple)):  # Python strings: as a batch tensor
            texts = tf.constant(texts, tf.string)
        return super().__call__(texts, *args, **kwargs)

    def call(self, texts):
        words = split_words(texts, self.lowercase)
        ids = tf.ragged.map_flat_values(lambda w: tf.cast(self._token_to_id.lookup(w), tf.int32), words)
        if self.sequence_length is None:
            if self.add_ends:
                rows = ids.nrows()
                ids = tf.concat([tf.fill([rows, 1], BOS_ID), ids, tf.fill([rows, 1], EOS_ID)], axis=1)
            return ids
        if not self.add_ends:
            return ids.to_tensor(default_value=PAD_ID, shape=[None, self.sequence_length])
        # [BOS] w1 .. wn [EOS] [PAD] ..., the words cut to leave room for both ends
        room = self.sequence_length - 2
        body = ids.to_tensor(default_value=PAD_ID, shape=[None, room])
        count = tf.cast(tf.minimum(ids.row_lengths(), room), tf.int32)
        rows = tf.shape(body)[0]
        framed = tf.concat([tf.fill([rows, 1], BOS_ID), body, tf.fill([rows, 1], PAD_ID)], axis=1)
        return framed + EOS_ID * tf.one_hot(count + 1, self.sequence_length, dtype=tf.int32)

    def detokenize(self, ids):
        """int ids `[B, L]` -> tf.string `[B]`: the tokens joined by spaces, padding dropped."""
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int64)
        ids = tf.ragged.boolean_mask(ids, ids != PAD_ID)
        tokens = tf.ragged.map_flat_values(self._id_to_token.lookup, ids)
        return tf.strings.reduce_join(tokens, axis=-1, separator=" ")

    def compute_output_spec(self, texts):
        return keras.KerasTensor([texts.shape[0], self.sequence_length], dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update(vocabulary=list(self.vocabulary), sequence_length=self.sequence_length,
                      add_ends=self.add_ends, lowercase=self.lowercase)
        return config
