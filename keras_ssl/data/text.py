"""Text sources: `text:PATH` (a file of lines, or class folders of `.txt` files),
`fortunes` (Debian's fortunes, offline) and `tfds:` text sets, as a `TextDataset`.

    dataset = load_text("text:corpus.txt")
    dataset.train.texts    # str [N]
    dataset.train.labels   # int32 [N] (class folders, fortunes' categories), or None
    dataset.train.ids      # int32 [N, L] once tokenized (`dataset.tokenized(tokenizer)`), else None

Layouts of `text:PATH`:

* a UTF-8 file: one example per non-empty line (unlabelled; the line's end and a
  trailing carriage return are not part of it);
* a folder with one sub-folder per class holding `.txt` files, one example per file
  (its whole UTF-8 text, the final line end dropped); `train/` and `test/` sub-folders
  are the splits when present.

Without given splits a fixed random 10% (seed 0) is the test split, as for image and
audio folders. A file that is not UTF-8 is refused (the file and the byte offset); in
a folder it is skipped with one warning naming every such file, or refused with
`on_corrupt="error"`, as a damaged image is.

`fortunes`: the 43 category files of Debian's `fortunes` package (about 15,000
fortunes, `%`-separated records, `apt-get install fortunes`) under
`/usr/share/games/fortunes` (or `--data_dir`); the `.dat` and `.u8` files are indexes
and links and are not read. The label is the category (file name); the test split is
a fixed stratified 10% (seed 0).
"""

import dataclasses
import os
import warnings
import weakref

import numpy as np

from keras_ssl.data.folders import warn_unread
from keras_ssl.data.splits import IndexedExamples, LabelledFacts
from keras_ssl.errors import UserError

FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNES_INSTALL = "apt-get install fortunes (Debian/Ubuntu), or `make dataset-text` as root"
TEXT_EXTENSIONS = (".txt",)
TEST_FRACTION = 0.1


@dataclasses.dataclass
class TextSplit(IndexedExamples):
    """One split: `texts` str `[N]` (a NumPy object array), `labels` int32 `[N]` or None,
    `ids` int32 `[N, L]` token ids once tokenized, else None."""

    texts: np.ndarray
    labels: np.ndarray | None
    ids: np.ndarray | None = None


@dataclasses.dataclass
class TextDataset(LabelledFacts):
    """A named text dataset: train and test splits, class names."""

    name: str
    train: TextSplit
    test: TextSplit
    class_names: tuple = ()
    modality = "text"

    @property
    def input_shape(self):
        """The shape of one model input: `(L,)` token ids once tokenized, else `(None,)`."""
        return (None if self.train.ids is None else int(self.train.ids.shape[1]),)

    def tokenized(self, tokenizer, batch_size=2048):
        """This dataset with `ids` in both splits: `tokenizer` (a string -> int32 `[B, L]`
        layer, `keras_ssl.byte_pair.BytePairTokenizer`) applied in batches."""
        return dataclasses.replace(self, train=tokenize_split(self.train, tokenizer, batch_size),
                                   test=tokenize_split(self.test, tokenizer, batch_size))


_ENCODERS = weakref.WeakKeyDictionary()


def tokenize_split(split, tokenizer, batch_size=2048):
    """`split` with `ids`: int32 `[N, L]` of its texts by `tokenizer`, in batches."""
    import tensorflow as tf

    length = tokenizer.sequence_length
    encode = _ENCODERS.get(tokenizer)
    if encode is None:  # one trace per tokenizer
        encode = _ENCODERS[tokenizer] = tf.function(tokenizer.__call__,
                                                    input_signature=[tf.TensorSpec([None], tf.string)])
    parts = [encode(tf.constant([t.encode("utf-8") for t in split.texts[i:i + batch_size]], tf.string)).numpy()
             for i in range(0, len(split), batch_size)]
    ids = np.concatenate(parts) if parts else np.zeros((0, length), np.int32)
    return dataclasses.replace(split, ids=ids.astype(np.int32))


def _texts(values):
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _read_utf8(path):
    """The text of a file; a `UnicodeDecodeError` names the byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    return data.decode("utf-8")


def _not_utf8(path, error):
    return (f"{path} is not UTF-8 text (byte {error.start}: {error.object[error.start:error.start + 4]!r}); "
            "convert it, e.g. iconv -f latin1 -t utf-8")


def _held_out(n, labels=None, fraction=TEST_FRACTION, seed=0):
    """`(train, test)` indices: a fixed random `fraction` (stratified by `labels`)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(n, bool)
    groups = [np.arange(n)] if labels is None else [np.nonzero(labels == c)[0] for c in np.unique(labels)]
    for members in groups:
        order = rng.permutation(members)
        test[order[:int(round(len(members) * fraction))]] = True
    return np.nonzero(~test)[0], np.nonzero(test)[0]


def _split(texts, labels, index):
    return TextSplit(_texts([texts[i] for i in index]), None if labels is None else labels[index])


def load_lines(path):
    """A UTF-8 file, one example per non-empty line, as an unlabelled `TextDataset`."""
    try:
        text = _read_utf8(path)
    except UnicodeDecodeError as e:
        raise UserError(_not_utf8(path, e)) from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"{path} holds no text (no non-empty line); a text dataset is one example per line")
    train, test = _held_out(len(lines))
    return TextDataset(f"text:{path}", _split(lines, None, train), _split(lines, None, test))


def _list_texts(directory):
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.lower().endswith(TEXT_EXTENSIONS) and os.path.isfile(os.path.join(directory, f)))


def _class_folder(directory, on_corrupt):
    classes = sorted(d for d in os.listdir(directory)
                     if os.path.isdir(os.path.join(directory, d)) and _list_texts(os.path.join(directory, d)))
    if not classes:
        raise UserError(f"no class sub-folders of .txt files in {directory}; a text folder holds one sub-folder per "
                        "class (or give a file of lines)")
    texts, labels, paths, bad = [], [], [], []
    for index, name in enumerate(classes):
        for path in _list_texts(os.path.join(directory, name)):
            paths.append(path)
            try:
                text = _read_utf8(path)
            except UnicodeDecodeError as e:
                bad.append(_not_utf8(path, e))
                continue
            text = text[:-1] if text.endswith("\n") else text
            if not text.strip():
                bad.append(f"{path} is empty")
                continue
            texts.append(text)
            labels.append(index)
    if bad:
        if on_corrupt == "error":
            raise UserError(f"{len(bad)} unreadable text file(s), first: {bad[0]}; or load with on_corrupt='skip'")
        warnings.warn(f"skipped {len(bad)} text file(s): " + "; ".join(bad[:20]))
    if not texts:
        raise UserError(f"none of the {len(paths)} .txt files under {directory} holds UTF-8 text")
    return texts, np.asarray(labels, np.int32), tuple(classes), paths


def load_text(spec, on_corrupt="skip"):
    """`text:PATH` as a `TextDataset`; see the module docstring."""
    path = spec[len("text:"):] if spec.startswith("text:") else spec
    if on_corrupt not in ("skip", "error"):
        raise UserError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if os.path.isfile(path):
        return load_lines(path)
    if not os.path.isdir(path):
        raise UserError(f"text:{path}: no such file or folder; give a UTF-8 file (one example per line) or a folder "
                        "of class sub-folders of .txt files")
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        texts, labels, classes, read = _class_folder(train_dir, on_corrupt)
        test_texts, test_labels, test_classes, test_read = _class_folder(test_dir, on_corrupt)
        if test_classes != classes:
            raise UserError(f"train/ and test/ of {path} have different class folders: {classes} vs {test_classes}")
        train = TextSplit(_texts(texts), labels)
        test = TextSplit(_texts(test_texts), test_labels)
        read = read + test_read
    else:
        texts, labels, classes, read = _class_folder(path, on_corrupt)
        train_index, test_index = _held_out(len(texts))
        train, test = _split(texts, labels, train_index), _split(texts, labels, test_index)
    warn_unread(path, read, "text: only .txt files in the class folders")
    return TextDataset(f"text:{path}", train, test, classes)


def parse_fortunes(text):
    """The fortunes of one file: records separated by lines holding only `%`, each
    without its final line end; blank records dropped."""
    records, current = [], []
    for line in text.split("\n"):
        if line.rstrip("\r") == "%":
            records.append("\n".join(current))
            current = []
        else:
            current.append(line)
    records.append("\n".join(current).rstrip("\n"))
    return [r for r in records if r.strip()]


def fortunes_dirs(data_dir=None):
    """Where `fortunes` is looked for, in order."""
    return ([data_dir, os.path.join(data_dir, "fortunes")] if data_dir else []) + [FORTUNES_DIR]


def load_fortunes(data_dir=None):
    """Debian's fortunes as a labelled `TextDataset` (label: the category file)."""
    for directory in fortunes_dirs(data_dir):
        if not os.path.isdir(directory):
            continue
        files = sorted(f for f in os.listdir(directory) if not f.endswith((".dat", ".u8")) and not f.startswith(".")
                       and os.path.isfile(os.path.join(directory, f))
                       and os.path.isfile(os.path.join(directory, f + ".dat")))
        if not files:
            continue
        texts, labels = [], []
        for index, name in enumerate(files):
            path = os.path.join(directory, name)
            try:
                records = parse_fortunes(_read_utf8(path))
            except UnicodeDecodeError as e:
                raise UserError(_not_utf8(path, e)) from None
            texts += records
            labels += [index] * len(records)
        labels = np.asarray(labels, np.int32)
        train, test = _held_out(len(texts), labels)
        return TextDataset("fortunes", _split(texts, labels, train), _split(texts, labels, test), tuple(files))
    raise UserError(f"the fortunes dataset is not installed (looked in {', '.join(fortunes_dirs(data_dir))}); "
                    f"install it: {FORTUNES_INSTALL}")


def is_text_builder(builder, tfds):
    """True when a TFDS builder's supervised input is a `tfds.features.Text` feature."""
    text_type = getattr(getattr(tfds, "features", None), "Text", None)
    if text_type is None:
        return False
    key = (builder.info.supervised_keys or ("text",))[0]
    try:
        return key in builder.info.features and isinstance(builder.info.features[key], text_type)
    except (TypeError, KeyError):
        return False


def load_tfds_text(name, builder, train_split, test_split):
    """A TFDS text set (e.g. `imdb_reviews`) as a `TextDataset`: the supervised text
    (UTF-8, decoded with replacement of bad bytes) and label."""
    import tensorflow_datasets as tfds

    text_key, label_key = builder.info.supervised_keys or ("text", "label")

    def read(split):
        texts, labels = [], []
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            value = example[text_key]
            texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
            labels.append(int(example[label_key]))
        return TextSplit(_texts(texts), np.asarray(labels, np.int32))

    train = read(train_split)
    test = read(test_split) if test_split else TextSplit(train.texts[:0], train.labels[:0])
    names = tuple(getattr(builder.info.features[label_key], "names", ()) or ())
    return TextDataset(f"tfds:{name}", train, test, names)


# The contract test's tiny labelled set: three topics with their own words.
_SMOKE_TOPICS = {
    "animals": ("cat", "dog", "horse", "mouse", "bird", "fox", "cow", "sheep"),
    "food": ("bread", "cheese", "apple", "soup", "rice", "pasta", "cake", "tea"),
    "weather": ("rain", "snow", "wind", "sun", "storm", "cloud", "fog", "frost"),
}


def write_smoke_texts(root, per_class=40, seed=0):
    """A class folder of short `.txt` texts (3 topics x `per_class`) under `root`, made
    once; returns its path."""
    path = os.path.join(root, "text_topics")
    if os.path.isdir(path):
        return path
    rng = np.random.default_rng(seed)
    for topic, words in _SMOKE_TOPICS.items():
        os.makedirs(os.path.join(path, topic), exist_ok=True)
        for i in range(per_class):
            picked = rng.choice(words, size=rng.integers(3, 8))
            text = f"The {' and the '.join(picked)} {rng.choice(['were', 'are', 'seemed'])} here today."
            with open(os.path.join(path, topic, f"{i:03d}.txt"), "w", encoding="utf-8") as f:
                f.write(text + "\n")
    return path


def packed_windows(ids, length, seed=0, copies=1):
    """GPT's packed training sequences: int32 `[copies * n, length]`.

    Each copy concatenates every text of `ids` (int `[N, L]`, framed `[BOS] ... [EOS]`,
    `PAD_ID` after it), its padding dropped, in an order drawn from `seed` (a new order
    per copy: one copy per epoch), and cuts the stream into `n = tokens // length`
    windows; the last `tokens mod length` tokens of each copy are left out. A window may
    start or end inside a text and hold several: the model learns to start afresh after
    [BOS], as GPT-2/3 train on documents packed into full windows separated by
    <|endoftext|> (Radford et al. 2019; Brown et al. 2020, section 2.2). No token is
    padding, so a step trains on `batch x length` tokens rather than the texts' own
    (about a third of that for fortunes framed in 128 ids).
    """
    from keras_ssl.tokenizers import PAD_ID

    ids = np.asarray(ids)
    texts = [row[row != PAD_ID] for row in ids]
    tokens = sum(len(t) for t in texts)
    n = tokens // int(length)
    if n < 1:
        raise UserError(f"the training texts hold {tokens} tokens, fewer than one packed window of {length}; "
                        "lower --sequence_length or add texts")
    rng = np.random.default_rng(seed)
    windows = [np.concatenate([texts[i] for i in rng.permutation(len(texts))])[:n * length].reshape(n, length)
               for _ in range(int(copies))]
    return np.concatenate(windows).astype(np.int32)
