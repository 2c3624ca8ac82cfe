"""The text modality: its sources (a file of lines, class folders, Debian's fortunes, TFDS
text sets), the byte-level BPE tokenizer (trained here, encoded in the graph) against a
reference written apart, its SavedModel served in a process without keras or keras_ssl,
the Transformer encoder's masks, and bad input refused in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.byte_pair import BYTE_OFFSET, FIRST_MERGE_ID, BytePairTokenizer, train_byte_pair
from keras_ssl.data.text import FORTUNES_DIR, load_fortunes, load_text, parse_fortunes
from keras_ssl.errors import UserError
from keras_ssl.tokenizers import BOS_ID, EOS_ID, PAD_ID
from tests.helpers import BLOCK_KERAS

SAMPLE = ["The cat sat on the mat.  Hello\n\nworld!!", "", "aaaa bbb  ccc\t x", "Été, café: ÜBER-naïve (2024)?",
          "   ", "a", "x \n y", "tabs\t\tand  spaces\r\n", "emoji 🙂🙂 and ＣＪＫ 漢字", "end with space "]

_LETTER, _DIGIT, _WHITE, _OTHER = range(4)


def _class(b):
    if 65 <= b <= 90 or 97 <= b <= 122 or b >= 128:
        return _LETTER
    if 48 <= b <= 57:
        return _DIGIT
    return _WHITE if b in (9, 10, 11, 12, 13, 32) else _OTHER


def reference_chunks(data):
    """GPT-2's pre-tokenization on bytes, as a scanner (written apart from the library's regex
    and from its graph rule): ' ?L+', ' ?D+', ' ?O+', then white space that leaves its last
    byte to a following non-space chunk."""
    out, i, n = [], 0, len(data)
    while i < n:
        if data[i] == 32 and i + 1 < n and _class(data[i + 1]) != _WHITE:
            j = i + 1
        elif _class(data[i]) != _WHITE:
            j = i
        else:
            k = i
            while k < n and _class(data[k]) == _WHITE:
                k += 1
            if k < n and k - i > 1:
                k -= 1
            out.append(data[i:k])
            i = k
            continue
        k = j
        while k < n and _class(data[k]) == _class(data[j]):
            k += 1
        out.append(data[i:k])
        i = k
    return out


def reference_encode(text, merges):
    """GPT-2's `bpe` per chunk: merge the lowest-ranked adjacent pair everywhere, repeat."""
    rank = {tuple(int(v) for v in pair): r for r, pair in enumerate(merges)}
    ids = []
    for chunk in reference_chunks(text.encode("utf-8")):
        word = [BYTE_OFFSET + b for b in chunk]
        while True:
            ranked = [(rank[p], p) for p in zip(word, word[1:]) if p in rank]
            if not ranked:
                break
            r, pair = min(ranked)
            out, i = [], 0
            while i < len(word):
                if tuple(word[i:i + 2]) == pair:
                    out.append(FIRST_MERGE_ID + r)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        ids += word
    return ids


def random_texts(count, seed=0):
    """Strings of random characters: ASCII (controls, white space runs), Latin-1, Greek,
    CJK, emoji, and runs of one character (pairs of equal tokens)."""
    rng = np.random.default_rng(seed)
    pools = [list(range(0, 128)), [32] * 8 + [10, 9], list(range(0xA0, 0x180)), list(range(0x391, 0x3CA)),
             list(range(0x4E00, 0x4E80)), list(range(0x1F600, 0x1F650))]
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(int(rng.integers(0, 40))):
            pool = pools[int(rng.integers(len(pools)))]
            chars.append(chr(pool[int(rng.integers(len(pool)))]) * int(rng.choice([1, 1, 1, 2, 3, 5])))
        texts.append("".join(chars))
    return texts


def fortunes_installed():
    return os.path.isfile(os.path.join(FORTUNES_DIR, "fortunes.dat"))


def _corpus():
    if fortunes_installed():
        return load_fortunes().train.texts[:3000].tolist()
    return [line for text in SAMPLE for line in text.split()] * 20 + SAMPLE * 20


@pytest.fixture(scope="module")
def merges():
    return train_byte_pair(_corpus() + random_texts(200, seed=1), vocabulary_size=1200)


def test_the_graph_encodes_as_the_reference_on_real_and_random_text_and_round_trips(merges):
    tokenizer = BytePairTokenizer(merges)
    texts = SAMPLE + _corpus()[:400] + random_texts(300, seed=2)
    encoded = tokenizer(texts).to_list()
    for text, ids in zip(texts, encoded):
        assert ids == reference_encode(text, merges), repr(text)
    assert max(max(ids, default=0) for ids in encoded) >= FIRST_MERGE_ID + 100  # the merges are used
    back = tokenizer.detokenize(tf.ragged.constant(encoded, dtype=tf.int64)).numpy()
    assert [b.decode("utf-8") for b in back] == texts
    # non-UTF-8 bytes are bytes too: a byte-level round trip
    raw = [bytes(range(256)), b"caf\xe9 \xff\xfe"]
    assert tokenizer.detokenize(tokenizer(raw)).numpy().tolist() == raw


def test_the_trainer_merges_the_most_frequent_pair_first_and_is_deterministic():
    texts = ["aaab aaab", "ab ab ab", "b"]
    merges = train_byte_pair(texts, vocabulary_size=FIRST_MERGE_ID + 3)
    a, b = BYTE_OFFSET + ord("a"), BYTE_OFFSET + ord("b")
    # chunks: "aaab" x1, " aaab" x1, "ab" x1, " ab" x2: (a, b) occurs 5 times, (a, a) 4, (space, a) 3
    assert merges[0].tolist() == [a, b]
    np.testing.assert_array_equal(train_byte_pair(texts, vocabulary_size=FIRST_MERGE_ID + 3), merges)
    assert len(train_byte_pair(["xy"], vocabulary_size=5000)) == 0  # min_count=2: nothing seen twice
    with pytest.raises(UserError, match="at least 261 tokens"):
        train_byte_pair(texts, vocabulary_size=100)
    with pytest.raises(UserError, match="joins a token that is special or not made yet"):
        BytePairTokenizer([[a, FIRST_MERGE_ID + 5]])


def test_the_tokenizer_frames_pads_and_cuts_and_keeps_its_merges_in_its_config(merges):
    import keras

    tokenizer = BytePairTokenizer(merges, sequence_length=6, add_ends=True)
    ids = tokenizer(["ab", "", "a much longer text than six tokens"]).numpy()
    short = reference_encode("ab", merges)
    assert ids[0].tolist() == [BOS_ID, *short, EOS_ID] + [PAD_ID] * (4 - len(short))
    assert ids[1].tolist() == [BOS_ID, EOS_ID, 0, 0, 0, 0]
    cut = reference_encode("a much longer text than six tokens", merges)[:5]
    assert ids[2].tolist() == [BOS_ID] + cut  # cut short: no [EOS]
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(tokenizer))
    np.testing.assert_array_equal(again(SAMPLE), tokenizer(SAMPLE))
    assert again.vocabulary_size() == FIRST_MERGE_ID + len(merges) and tokenizer.get_vocabulary()[BYTE_OFFSET +
                                                                                                   32] == "Ġ"
    assert tokenizer.detokenize(ids).numpy().tolist()[:2] == [b"ab", b""]


def test_tokenizing_the_fortunes_takes_seconds():
    if not fortunes_installed():
        pytest.skip("Debian's fortunes is not installed (make dataset-text installs it)")
    import time

    dataset = load_fortunes()
    assert len(dataset.train) + len(dataset.test) > 14000 and dataset.num_classes == 43
    assert "fortunes" in dataset.class_names and "art" in dataset.class_names
    start = time.perf_counter()
    merges = train_byte_pair(dataset.train.texts, vocabulary_size=4096)
    tokenized = dataset.tokenized(BytePairTokenizer(merges, sequence_length=128, add_ends=True))
    assert time.perf_counter() - start < 120  # about 6 s on a 2-core machine; minutes would be a regression
    assert tokenized.train.ids.shape == (len(dataset.train), 128) and tokenized.test.ids.dtype == np.int32
    again = load_fortunes()
    assert again.test.texts.tolist() == dataset.test.texts.tolist()  # a fixed split


def test_a_file_of_lines_and_class_folders_load_and_bad_files_are_refused_in_one_line(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_bytes("first line\r\n\n  \nsecond line\nthird, été\n".encode() * 10)
    dataset = load_text(f"text:{lines}")
    assert len(dataset.train) + len(dataset.test) == 30 and len(dataset.test) == 3 and not dataset.labelled
    assert set(dataset.train.texts) <= {"first line", "second line", "third, été"}

    folder = tmp_path / "topics"
    for topic in ("cats", "dogs"):
        (folder / topic).mkdir(parents=True)
        for i in range(10):
            (folder / topic / f"{i}.txt").write_text(f"a text about {topic} number {i}\nsecond line\n")
    (folder / "dogs" / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.warns(UserWarning, match=r"skipped 1 text file.*latin1.txt is not UTF-8 text \(byte 3"):
        dataset = load_text(f"text:{folder}")
    assert dataset.class_names == ("cats", "dogs") and len(dataset.train) + len(dataset.test) == 20
    assert dataset.train.texts[0].endswith("second line")  # the whole file, its last line end dropped
    with pytest.raises(UserError, match="1 unreadable text file"):
        load_text(f"text:{folder}", on_corrupt="error")

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    for path, message in ((bad, r"bad.txt is not UTF-8 text \(byte 8"), (empty, "holds no text"),
                          (tmp_path / "missing", "no such file or folder")):
        with pytest.raises(UserError, match=message) as error:
            load_text(f"text:{path}")
        assert "\n" not in str(error.value)


def test_the_fortunes_parser_reads_categories_and_says_how_to_install_when_missing(tmp_path, monkeypatch):
    corpus = tmp_path / "fortunes"
    corpus.mkdir()
    (corpus / "pets").write_text("A dog.\n%\nTwo\nlines.\n%\n%\nA cat.\n")
    (corpus / "work").write_text("Work.\n%\n" * 9 + "Last.")
    for name in ("pets", "work"):
        (corpus / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02")  # strfile's index: not read
        os.symlink(name, corpus / f"{name}.u8")
    assert parse_fortunes("A dog.\n%\nTwo\nlines.\n%\n%\nA cat.\n") == ["A dog.", "Two\nlines.", "A cat."]
    dataset = load_fortunes(str(tmp_path))
    assert dataset.class_names == ("pets", "work") and dataset.name == "fortunes"
    texts = sorted(dataset.train.texts.tolist() + dataset.test.texts.tolist())
    assert texts == sorted(["A dog.", "Two\nlines.", "A cat."] + ["Work."] * 9 + ["Last."])
    assert len(dataset.test) == 1 and dataset.test.labels.tolist() == [1]  # 10% of each category (0.3 rounds to 0)
    monkeypatch.setattr("keras_ssl.data.text.FORTUNES_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"the fortunes dataset is not installed .*apt-get install fortunes") as error:
        load_fortunes()
    assert "\n" not in str(error.value)


def test_tfds_text_sets_are_read_by_the_text_modality(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from keras_ssl import modalities

    class Info:
        supervised_keys = ("text", "label")
        features = tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                               "label": tfds.features.ClassLabel(names=["neg", "pos"])})
        splits = {"train": None, "test": None}

    class FakeBuilder:
        info = Info()

        def as_dataset(self, split):
            texts = {"train": [b"good film", b"bad film", "caf\u00e9".encode()], "test": [b"fine"]}[split]
            return tf.data.Dataset.from_tensor_slices({"text": texts, "label": [i % 2 for i in range(len(texts))]})

    builder = FakeBuilder()
    assert modalities.for_tfds(builder, tfds).name == "text"
    dataset = modalities.get("text").load_tfds("fake_reviews", builder, "train", "test")
    assert dataset.name == "tfds:fake_reviews" and dataset.class_names == ("neg", "pos")
    assert dataset.train.texts.tolist() == ["good film", "bad film", "café"] and dataset.train.labels.tolist() == [
        0, 1, 0]


def test_a_text_dataset_given_to_an_image_method_and_bad_batches_are_refused_in_one_line(tmp_path):
    from keras_ssl.data import load_source
    from keras_ssl.run_setup import check_modality, load_run_dataset
    from keras_ssl.training import TrainConfig

    lines = tmp_path / "lines.txt"
    lines.write_text("one line\nanother line\n" * 10)
    config = TrainConfig.from_dict({"method": "simclr", "dataset": f"text:{lines}", "model_dir": str(tmp_path / "r")})
    with pytest.raises(UserError, match=r"method simclr trains on image and text:.* holds text; choose an image "
                                        "dataset") as error:
        check_modality(config, load_run_dataset(config))
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="unknown dataset 'txt:x'; choose one of .*text:PATH, fortunes"):
        load_source("txt:x")
    with pytest.raises(UserError, match="sequence_length must be in"):
        TrainConfig.from_dict({"method": "gpt", "sequence_length": 2, "model_dir": "r"}).validate()
    with pytest.raises(UserError, match="sequence_length does not apply to method simclr"):
        TrainConfig.from_dict({"method": "simclr", "sequence_length": 64, "model_dir": "r"})


def test_the_encoder_masks_padding_and_later_tokens_when_causal():
    from keras_ssl.text_encoders import build_text_encoder, encode_sequence, set_causal

    import keras

    keras.utils.set_random_seed(0)
    encoder = build_text_encoder("transformer_small", 300, 16, width_multiplier=0.25)
    ids = np.array([[2, 40, 50, 60, 3, 0, 0, 0]], np.int32)
    longer = np.pad(ids, [(0, 0), (0, 8)])  # more padding: the same text
    np.testing.assert_allclose(encoder(ids), encoder(longer), atol=1e-5)
    changed = ids.copy()
    changed[0, 3] = 70
    bidirectional = encode_sequence(encoder, ids).numpy()
    assert not np.allclose(encode_sequence(encoder, changed).numpy()[0, :3], bidirectional[0, :3], atol=1e-5)
    set_causal(encoder)
    causal, causal_changed = encode_sequence(encoder, ids).numpy(), encode_sequence(encoder, changed).numpy()
    np.testing.assert_allclose(causal[0, :3], causal_changed[0, :3], atol=1e-5)  # earlier positions see no later token
    assert encoder.count_params() < 1_000_000 and build_text_encoder(
        "transformer_small", 4096, 128).count_params() > 4_000_000


SERVE = BLOCK_KERAS + '''
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
out = {}
texts = tf.constant([t.encode() for t in json.loads(sys.argv[2])])
result = loaded.signatures["serving_default"](text=texts)
out["ids"] = result["ids"].numpy().tolist()
out["back"] = [b.decode("utf-8", "replace") for b in result["back"].numpy()]  # a cut text may end mid-character
try:
    loaded.signatures["serving_default"](text=tf.constant([b"fine", b"caf\\xe9"]))
    out["refused"] = None
except tf.errors.InvalidArgumentError as e:
    out["refused"] = [l for l in e.message.splitlines() if "serving_default:" in l][0].strip()
out["keras_loaded"] = "keras" in sys.modules or "keras_ssl" in sys.modules
print(json.dumps(out))
'''


def test_a_saved_model_tokenizes_strings_without_keras_and_carries_its_merges_as_assets(tmp_path, merges):
    from keras_ssl.export import export_saved_model
    from keras_ssl.models.common import MethodModel
    from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput

    length = 24
    tokenizer = BytePairTokenizer(merges, sequence_length=length, add_ends=True)

    class Ids(MethodModel):
        SUB_MODELS = ()
        MODALITY = "text"

        def __init__(self, tokenizer, **kwargs):
            super().__init__(**kwargs)
            self.tokenizer = tokenizer
            self.build()

        def serving_endpoints(self, input_shape, threshold=None):
            outputs = (ServingOutput("ids", "int32", (length,), "the token ids"),
                       ServingOutput("back", "string", (), "the text again"))
            return [Endpoint("serving_default", (ServingInput("text", "text", tokenizer=self.tokenizer),), outputs,
                             lambda ids: {"ids": ids, "back": self.tokenizer.detokenize(ids)})]

    path = export_saved_model(Ids(tokenizer), str(tmp_path), "bpe", input_shape=(length,))
    assert sorted(os.listdir(os.path.join(path, "assets"))) == ["merges.txt", "vocabulary.txt"]
    with open(os.path.join(path, "assets", "vocabulary.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == tokenizer.get_vocabulary()
    with open(os.path.join(path, "assets.extra", "preprocessing.json")) as f:
        assert "byte-level BPE" in json.load(f)["signatures"]["serving_default"]["inputs"]["text"]
    moved = str(tmp_path / "moved")
    os.rename(path, moved)
    texts = SAMPLE[:4] + random_texts(4, seed=3)
    proc = subprocess.run([sys.executable, "-c", SERVE, moved, json.dumps(texts)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not served["keras_loaded"]
    assert served["ids"] == tokenizer(texts).numpy().tolist()
    short = [t for t, ids in zip(texts, served["ids"]) if ids[-1] == PAD_ID or EOS_ID in ids]
    assert short and all(t in served["back"] for t in short)  # what was not cut comes back whole
    assert "serving_default: texts that are not valid UTF-8 (indices): [1]" in served["refused"]
