"""A byte-level byte-pair-encoding (BPE) tokenizer: trained here, encoded in pure TensorFlow.

GPT-2's scheme (Radford et al. 2019; BPE: Sennrich et al. 2016): a text is its UTF-8
bytes, cut into chunks (below), and each chunk's bytes are merged by learned pairs.
The vocabulary is

    ids 0-4     [PAD] [UNK] [BOS] [EOS] [MASK]  (`keras_ssl.tokenizers.SPECIAL_TOKENS`)
    ids 5-260   the 256 bytes (id = 5 + byte): every text is encodable, nothing is [UNK]
    ids 261-    one token per learned merge, in the order learned: merge r makes id 261 + r

so `detokenize(tokenize(s)) == s` for every string (the bytes come back; padding and
the [BOS]/[EOS] frame are dropped).

Chunks (GPT-2's pre-tokenization regex, on bytes, without its English contractions):

    CHUNK = " ?L+| ?D+| ?O+|S+(?!\\S)|S+"

with L the letters (ASCII letters and every byte >= 0x80, so that a UTF-8 character is
never cut between chunks), D the digits 0-9, S the white space bytes \\t \\n \\v \\f \\r and
space, O every other byte. A merge never crosses a chunk: " the" and " cat" are
tokens, " the cat" is never one.

Encoding a chunk (GPT-2's `bpe`): while some adjacent pair of its tokens is a learned
merge, merge every occurrence, left to right without overlap, of the pair of lowest
rank. `encode_python` is that loop in Python; `BytePairTokenizer` (a Keras layer) does
the same in the graph with a `tf.while_loop` over all the chunks of a batch at once
(each chunk merges its own lowest pair in each iteration; a chunk with nothing left to
merge leaves the loop), so that a SavedModel takes raw strings with no
tensorflow-text op (TF Serving's stock build has none): its merges are the asset
`assets/merges.txt` (line r: `key<TAB>left right`, the key of the pair `left * 2^20 +
right` its hash table reads, then the two tokens as GPT-2 prints them) and its
vocabulary `assets/vocabulary.txt` (line i: token i as GPT-2 prints bytes, which
`detokenize` reads).

Why the graph's loop is GPT-2's: each chunk is encoded on its own in both (a chunk never
sees another), and in one iteration a chunk merges exactly what GPT-2's loop merges in
one step: the pair of lowest rank present, at every occurrence, left to right without
overlap. Occurrences of a pair can only overlap when its two tokens are equal (a run
"a a a"); there the graph takes every other match from the start of each run of
matches, which is what a left-to-right scan takes. A chunk that merges nothing is final
in both.

    from keras_ssl.byte_pair import BytePairTokenizer, train_byte_pair
    merges = train_byte_pair(texts, vocabulary_size=4096)
    tokenizer = BytePairTokenizer(merges, sequence_length=128)
    ids = tokenizer(["Hello, world"])          # int32 [1, 128], [PAD]-padded
    tokenizer.detokenize(ids)                   # [b"Hello, world"]

Why not keras-hub's `BytePairTokenizer`: it splits with `tensorflow_text.regex_split`, a
custom op that a process importing only TensorFlow (and TF Serving's stock build)
cannot run, and keras-hub needs tensorflow-text, whose wheel requires the full
`tensorflow` wheel beside `tensorflow-cpu`.
"""

import atexit
import collections
import heapq
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.tokenizers import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS

BYTE_OFFSET = len(SPECIAL_TOKENS)  # id of byte 0
FIRST_MERGE_ID = BYTE_OFFSET + 256  # id of the token made by merge 0
_PAIR_BASE = 1 << 20  # key of a pair: left * _PAIR_BASE + right (ids < 2^20)
MAX_VOCABULARY = _PAIR_BASE
VOCABULARY_ASSET, MERGES_ASSET = "vocabulary.txt", "merges.txt"

_WHITE = b"\t\n\x0b\x0c\r "
# GPT-2's chunks on bytes (see the module docstring); `re` with bytes patterns.
CHUNK = re.compile(rb" ?[A-Za-z\x80-\xff]+| ?[0-9]+| ?[^A-Za-z0-9\x80-\xff\t\n\x0b\x0c\r ]+"
                   rb"|[\t\n\x0b\x0c\r ]+(?![^\t\n\x0b\x0c\r ])|[\t\n\x0b\x0c\r ]+")


def printable_bytes():
    """GPT-2's map of the 256 bytes to printable characters (`bytes_to_unicode`):
    printable Latin-1 bytes stand for themselves, the others for chr(256 + n)."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


_PRINTABLE = printable_bytes()


def chunks(text):
    """The chunks of `text` (str or bytes), as bytes."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return CHUNK.findall(data)


def _check_merges(merges):
    merges = np.asarray(merges, np.int64).reshape(-1, 2)
    if len(merges) + FIRST_MERGE_ID > MAX_VOCABULARY:
        raise UserError(f"a byte-pair vocabulary holds at most {MAX_VOCABULARY:,} tokens, got "
                        f"{len(merges) + FIRST_MERGE_ID:,}")
    made = FIRST_MERGE_ID + np.arange(len(merges))
    bad = np.nonzero((merges < BYTE_OFFSET).any(1) | (merges >= made[:, None]).any(1))[0]
    if len(bad):
        raise UserError(f"merge {bad[0]} {merges[bad[0]].tolist()} joins a token that is special or not made yet "
                        f"(merge r joins ids in [{BYTE_OFFSET}, {FIRST_MERGE_ID} + r)); train merges with "
                        "keras_ssl.byte_pair.train_byte_pair")
    keys = merges[:, 0] * _PAIR_BASE + merges[:, 1]
    if len(np.unique(keys)) != len(keys):
        raise UserError("a pair is merged twice in the merges given; train merges with train_byte_pair")
    return merges


def token_bytes(merges):
    """The bytes of every token id (the special tokens as their names)."""
    tokens = [t.encode() for t in SPECIAL_TOKENS] + [bytes([b]) for b in range(256)]
    for left, right in np.asarray(merges, np.int64).reshape(-1, 2):
        tokens.append(tokens[left] + tokens[right])
    return tokens


def printable(token):
    """A token's bytes as GPT-2 prints them (no white space: one line of a vocabulary file)."""
    return "".join(_PRINTABLE[b] for b in token)


def vocabulary(merges):
    """Token i, printable, for every id: the special tokens, the bytes, the merges."""
    return list(SPECIAL_TOKENS) + [printable(t) for t in token_bytes(merges)[BYTE_OFFSET:]]


def train_byte_pair(texts, vocabulary_size=4096, min_count=2):
    """Merges `[M, 2]` (int32 ids, rank order) learned on `texts` (an iterable of str):
    at each step the most frequent adjacent pair of tokens inside the chunks (counted
    with each chunk's frequency), ties broken by the smaller `(left, right)` ids, is
    merged into a new token, until the vocabulary has `vocabulary_size` tokens or no
    pair occurs `min_count` times. Deterministic. Sennrich et al. 2016's algorithm with
    the pair counts kept up to date per merge (only the chunks holding the pair are
    touched), so that it takes seconds on a few megabytes of text."""
    if vocabulary_size < FIRST_MERGE_ID:
        raise UserError(f"a byte-pair vocabulary needs at least {FIRST_MERGE_ID} tokens (5 special, 256 bytes), got "
                        f"vocabulary_size={vocabulary_size}")
    if vocabulary_size > MAX_VOCABULARY:
        raise UserError(f"vocabulary_size must be at most {MAX_VOCABULARY:,}, got {vocabulary_size:,}")
    counts = collections.Counter()
    for text in texts:
        counts.update(chunks(text))
    words = [[BYTE_OFFSET + b for b in chunk] for chunk in counts]
    freq = list(counts.values())
    pairs = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for index, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += freq[index]
            where[pair].add(index)
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) + FIRST_MERGE_ID < vocabulary_size and heap:
        negative, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -negative:
            continue  # a stale entry: its count changed since it was pushed
        if -negative < min_count:
            break
        new = FIRST_MERGE_ID + len(merges)
        merges.append(pair)
        changed = set()
        for index in sorted(where.pop(pair, ())):
            word, n = words[index], freq[index]
            for p in zip(word, word[1:]):  # the word's pairs leave the counts, then come back merged
                pairs[p] -= n
                changed.add(p)
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            words[index] = merged
            for p in zip(merged, merged[1:]):
                pairs[p] += n
                where[p].add(index)
                changed.add(p)
        pairs.pop(pair, None)
        for p in changed:
            if p != pair and pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
            elif p != pair:
                pairs.pop(p, None)
    return np.asarray(merges, np.int32).reshape(-1, 2)


def encode_python(text, merges):
    """The ids of `text` (str or bytes), in Python: GPT-2's loop per chunk (the reference
    the graph's encoding equals; the tests check it against one more written apart)."""
    ranks = {(int(a), int(b)): r for r, (a, b) in enumerate(np.asarray(merges).reshape(-1, 2))}
    ids = []
    for chunk in chunks(text):
        word = [BYTE_OFFSET + b for b in chunk]
        while len(word) > 1:
            rank = min((ranks.get(p, len(ranks)) for p in zip(word, word[1:])))
            if rank == len(ranks):
                break
            pair, merged, i = tuple(merges[rank]), [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(FIRST_MERGE_ID + rank)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids += word
    return ids


_ASSET_DIR = None


def _asset_files(merges):
    """`vocabulary.txt` and `merges.txt` of `merges`, written to a folder of this process
    (removed at exit): what the lookup tables read and an export copies as assets."""
    global _ASSET_DIR
    if _ASSET_DIR is None:
        _ASSET_DIR = tempfile.mkdtemp(prefix="keras_ssl-byte-pair-")
        atexit.register(shutil.rmtree, _ASSET_DIR, True)
    folder = tempfile.mkdtemp(dir=_ASSET_DIR)
    words = vocabulary(merges)
    vocabulary_path, merges_path = os.path.join(folder, VOCABULARY_ASSET), os.path.join(folder, MERGES_ASSET)
    with open(vocabulary_path, "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    with open(merges_path, "w", encoding="utf-8") as f:
        f.writelines(f"{int(a) * _PAIR_BASE + int(b)}\t{words[a]} {words[b]}\n" for a, b in merges)
    return vocabulary_path, merges_path


_LETTER, _DIGIT, _WHITE_CLASS, _OTHER = 0, 1, 2, 3


def _chunk_starts(values, row_starts_mask):
    """bool `[n]`: where a chunk starts, for the flat byte values of a batch of texts
    (`row_starts_mask`: the first byte of each text). The CHUNK regex as a rule on each
    pair of neighbours: no cut inside a run of one class L, D or O; in a run of white
    space, a cut only before its last byte when a non-space byte follows; a cut between
    white space and a non-space byte unless the white space byte is a single space."""
    v = values
    letter = ((v >= 65) & (v <= 90)) | ((v >= 97) & (v <= 122)) | (v >= 128)
    digit = (v >= 48) & (v <= 57)
    white = ((v >= 9) & (v <= 13)) | (v == 32)
    cls = tf.where(letter, _LETTER, tf.where(digit, _DIGIT, tf.where(white, _WHITE_CLASS, _OTHER)))
    prev_cls, prev_v = cls[:-1], v[:-1]
    this_cls = cls[1:]
    # the class after each position, within its text (none after a text's last byte)
    pairs = tf.maximum(tf.size(v) - 1, 0)
    ends = tf.concat([row_starts_mask[2:], [True]], axis=0)[:pairs]  # position i+1 is a text's last byte
    next_cls = tf.concat([cls[2:], [_WHITE_CLASS]], axis=0)[:pairs]
    next_is_word = tf.logical_not(ends) & (next_cls != _WHITE_CLASS)
    both_white = (prev_cls == _WHITE_CLASS) & (this_cls == _WHITE_CLASS)
    into_word = (prev_cls == _WHITE_CLASS) & (this_cls != _WHITE_CLASS)
    cut = tf.where(both_white, next_is_word,
                   tf.where(into_word, prev_v != 32, prev_cls != this_cls))
    return tf.concat([[True], cut], axis=0)[:tf.size(v)] | row_starts_mask


@keras.saving.register_keras_serializable(package="keras_ssl")
class BytePairTokenizer(keras.layers.Layer):
    """Strings -> int32 ids `[B, sequence_length]` (padded with `PAD_ID` or cut at the
    end), or ragged `[B, (tokens)]` without a `sequence_length`: byte-level BPE (see
    the module docstring), equal to `encode_python` on every string.

    Args:
      merges: int `[M, 2]` pairs of ids, rank order (`train_byte_pair`); kept in the
        layer's config and exported as the assets `merges.txt` and `vocabulary.txt`.
      sequence_length: ids per string; None keeps every token (ragged).
      add_ends: frame each string with `BOS_ID` ... `EOS_ID` (a language model's start
        and stop) within `sequence_length`; a text cut short keeps its [BOS] and has no [EOS].
    """

    def __init__(self, merges, sequence_length=None, add_ends=False, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        self.merges = _check_merges(merges)
        if sequence_length is not None and sequence_length < 1 + 2 * bool(add_ends):
            raise UserError(f"sequence_length must leave room for a token, got {sequence_length}")
        self.sequence_length = None if sequence_length is None else int(sequence_length)
        self.add_ends = bool(add_ends)
        vocabulary_path, merges_path = _asset_files(self.merges)
        self._ranks = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(merges_path, tf.int64, 0, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                                          delimiter="\t"), -1)
        self._id_to_token = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(vocabulary_path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                                          tf.lookup.TextFileIndex.WHOLE_LINE), "")
        self.built = True

    def vocabulary_size(self):
        return FIRST_MERGE_ID + len(self.merges)

    def get_vocabulary(self):
        return vocabulary(self.merges)

    def describe(self):
        """What the `text` serving input says of the tokenization (`preprocessing.json`)."""
        ends = "framed by [BOS] ... [EOS], " if self.add_ends else ""
        return (f"byte-level BPE of the UTF-8 bytes ({len(self.merges):,} merges, assets/merges.txt; "
                f"{self.vocabulary_size():,}-token vocabulary, assets/vocabulary.txt), {ends}padded with [PAD] or cut "
                f"to {self.sequence_length} ids")

    def __call__(self, texts, *args, **kwargs):
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        if isinstance(texts, (list, tuple, np.ndarray)):
            texts = tf.constant([t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts], tf.string)
        return super().__call__(texts, *args, **kwargs)

    def _merge(self, tokens):
        """int32 `[C, T]` chunks of byte ids (-1 after each chunk's end) -> the same, every
        chunk merged to the end (`encode_python`'s loop, all chunks at once)."""
        count, width = tf.shape(tokens)[0], tf.shape(tokens)[1]
        no_merge = tf.constant(np.iinfo(np.int32).max, tf.int32)

        def body(active, rows, done):
            left, right = active[:, :-1], active[:, 1:]
            pairs = tf.cast(left, tf.int64) * _PAIR_BASE + tf.cast(right, tf.int64)
            rank = tf.cast(self._ranks.lookup(pairs), tf.int32)
            rank = tf.where((left >= 0) & (right >= 0) & (rank >= 0), rank, no_merge)
            lowest = tf.reduce_min(tf.concat([rank, tf.fill([tf.shape(rank)[0], 1], no_merge)], 1), axis=1)
            match = rank == lowest[:, None]
            match &= (lowest < no_merge)[:, None]
            # left to right without overlap: in a run of matches (a pair of equal tokens,
            # "a a a"), every other one from the run's start
            n = tf.shape(match)[1]
            position = tf.broadcast_to(tf.range(n), tf.shape(match))
            run = tf.cumsum(tf.cast(tf.logical_not(match), tf.int32), axis=1)  # run id within the row
            segment = run + tf.range(tf.shape(match)[0])[:, None] * (n + 1)
            start = tf.math.unsorted_segment_min(tf.reshape(position, [-1]), tf.reshape(segment, [-1]),
                                                 tf.shape(match)[0] * (n + 1))
            before = position - tf.gather(start, segment) - tf.cast(run > 0, tf.int32)
            chosen = match & (before % 2 == 0)
            chosen = tf.pad(chosen, [[0, 0], [0, 1]])
            dropped = tf.pad(chosen[:, :-1], [[0, 0], [1, 0]])
            merged = tf.where(chosen, (FIRST_MERGE_ID + lowest)[:, None], active)
            keep = tf.logical_not(dropped) & (merged >= 0)
            merged = tf.ragged.boolean_mask(merged, keep).to_tensor(-1)
            finished = lowest == no_merge  # nothing merged: this chunk is done
            out = tf.pad(merged, [[0, 0], [0, width - tf.shape(merged)[1]]], constant_values=-1)
            done = tf.tensor_scatter_nd_update(done, tf.boolean_mask(rows, finished)[:, None],
                                               tf.boolean_mask(out, finished))
            still = tf.logical_not(finished)
            return tf.boolean_mask(merged, still), tf.boolean_mask(rows, still), done

        _, _, done = tf.while_loop(
            lambda active, rows, done: tf.shape(active)[0] > 0, body,
            (tokens, tf.range(count), tf.fill([count, width], -1)),
            shape_invariants=(tf.TensorShape([None, None]), tf.TensorShape([None]), tf.TensorShape([None, None])))
        return done

    def tokenize(self, texts):
        """tf.string `[B]` -> ragged int32 `[B, (tokens)]`."""
        texts = tf.convert_to_tensor(texts, tf.string)
        values = tf.strings.unicode_decode(texts, "ISO-8859-1")  # byte values, one code point per byte
        flat, text_of_byte = values.flat_values, values.value_rowids()
        first_byte = tf.concat([[True], text_of_byte[1:] != text_of_byte[:-1]], axis=0)[:tf.size(flat)]
        starts = tf.where(_chunk_starts(flat, first_byte))[:, 0]
        chunked = tf.RaggedTensor.from_row_starts(flat + BYTE_OFFSET, starts)  # [chunks, (byte ids)]
        text_of_chunk = tf.gather(text_of_byte, starts)
        # every distinct chunk is merged once (a key per chunk: its ids as code points)
        unique, index = tf.unique(tf.strings.unicode_encode(chunked, "UTF-8"))
        first = tf.math.unsorted_segment_min(tf.range(tf.size(index)), index, tf.size(unique))
        merged = self._merge(tf.gather(chunked, first).to_tensor(-1))
        tokens = tf.gather(tf.RaggedTensor.from_tensor(merged, padding=-1), index)  # [chunks, (tokens)]
        lengths = tf.math.unsorted_segment_sum(tokens.row_lengths(), text_of_chunk, tf.shape(texts, tf.int64)[0])
        return tf.RaggedTensor.from_row_lengths(tokens.flat_values, lengths)

    def call(self, texts):
        ids = self.tokenize(texts)
        if self.sequence_length is None:
            if self.add_ends:
                rows = ids.nrows()
                ids = tf.concat([tf.fill([rows, 1], BOS_ID), ids, tf.fill([rows, 1], EOS_ID)], axis=1)
            return ids
        if not self.add_ends:
            return ids.to_tensor(default_value=PAD_ID, shape=[None, self.sequence_length])
        # [BOS] t_1 .. t_n [EOS] [PAD]...; a text with more than L-2 tokens is cut to [BOS] t_1 .. t_{L-1}
        # (no [EOS]: it did not end there)
        body = ids.to_tensor(default_value=PAD_ID, shape=[None, self.sequence_length - 1])
        framed = tf.concat([tf.fill([tf.shape(body)[0], 1], BOS_ID), body], axis=1)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        ends = EOS_ID * tf.one_hot(tf.minimum(lengths + 1, self.sequence_length - 1), self.sequence_length,
                                   dtype=tf.int32)
        return framed + tf.where((lengths <= self.sequence_length - 2)[:, None], ends, 0)

    def detokenize(self, ids):
        """int ids `[B, L]` (or ragged) -> tf.string `[B]`: the tokens' bytes joined, [PAD],
        [BOS] and [EOS] dropped ([UNK] and [MASK] kept as their names)."""
        ids = tf.cast(ids if isinstance(ids, tf.RaggedTensor) else tf.convert_to_tensor(ids), tf.int64)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.ragged.boolean_mask(ids, (ids != PAD_ID) & (ids != BOS_ID) & (ids != EOS_ID))
        printed = tf.ragged.map_flat_values(self._id_to_token.lookup, ids)
        chars = tf.strings.unicode_decode(printed.flat_values, "UTF-8")  # printable code points per token
        table = np.zeros(512, np.int32)
        for b, c in enumerate(_PRINTABLE):
            table[ord(c)] = b
        byte_strings = tf.constant([bytes([b]) for b in range(256)])
        token_strings = tf.strings.reduce_join(
            tf.gather(byte_strings, tf.ragged.map_flat_values(tf.gather, tf.constant(table), chars)), axis=-1)
        return tf.strings.reduce_join(ids.with_flat_values(token_strings), axis=-1)

    def compute_output_spec(self, texts):
        return keras.KerasTensor([texts.shape[0], self.sequence_length], dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update(merges=self.merges.tolist(), sequence_length=self.sequence_length, add_ends=self.add_ends)
        return config
