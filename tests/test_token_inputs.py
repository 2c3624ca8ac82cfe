"""Sequence-model inputs: the word tokenizer as a layer carrying its vocabulary, and the
`tokens` and `text` serving kinds (text tokenized inside the SavedModel, the vocabulary
an asset), served in a process that cannot import keras or keras_ssl."""

import json
import os
import re
import subprocess
import sys
import unicodedata

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.models.common import MethodModel
from keras_ssl.tokenizers import PAD_ID, SPECIAL_TOKENS, UNK_ID, WordTokenizer, word_vocabulary
from tests.helpers import BLOCK_KERAS

CORPUS = ["The cat sat on the mat.", "The dog ate the cat's dinner!", "Été, café: ÜBER-naïve (2024)?",
          "tabs\tand  spaces\nand lines", "the the the cat"]


def _reference_words(text):
    """The split, written independently of the graph's: lowercase, each character that is not a
    letter, a digit or a space is a word of its own, then split on white space."""
    out, word = [], ""
    for ch in text.lower():
        category = unicodedata.category(ch)
        if ch.isspace():
            out, word = out + ([word] if word else []), ""
        elif category[0] in "LN":
            word += ch
        else:
            out, word = out + ([word] if word else []) + [ch], ""
    return out + ([word] if word else [])


def test_the_vocabulary_is_the_special_tokens_then_words_by_frequency():
    vocabulary = word_vocabulary(CORPUS, max_size=12)
    assert vocabulary[:5] == list(SPECIAL_TOKENS) and len(vocabulary) == 12
    counts = {}
    for text in CORPUS:
        for w in _reference_words(text):
            counts[w] = counts.get(w, 0) + 1
    expected = sorted(counts, key=lambda w: -counts[w])  # stable: ties in first-seen order
    assert vocabulary[5:] == expected[:7]
    assert word_vocabulary(CORPUS, min_count=2)[5:] == [w for w in expected if counts[w] >= 2]


def test_the_tokenizer_splits_as_the_reference_and_maps_unknown_words_to_unk():
    vocabulary = word_vocabulary(CORPUS)
    index = {w: i for i, w in enumerate(vocabulary)}
    tokenizer = WordTokenizer(vocabulary)
    texts = CORPUS + ["A zebra sat.", ""]
    ragged = tokenizer(texts)
    for text, ids in zip(texts, ragged.to_list()):
        assert ids == [index.get(w, UNK_ID) for w in _reference_words(text)], text
    dense = WordTokenizer(vocabulary, sequence_length=6)(texts).numpy()
    assert dense.shape == (len(texts), 6) and dense.dtype == np.int32
    for row, ids in zip(dense, ragged.to_list()):
        kept = ids[:6]
        assert list(row[:len(kept)]) == kept and set(row[len(kept):]) <= {PAD_ID}
    framed = WordTokenizer(vocabulary, sequence_length=5, add_ends=True)(["the cat sat on the mat", "cat", ""])
    the, cat, sat = index["the"], index["cat"], index["sat"]
    assert framed.numpy().tolist() == [[2, the, cat, sat, 3], [2, cat, 3, 0, 0], [2, 3, 0, 0, 0]]
    assert tokenizer.detokenize([[the, cat, PAD_ID]]).numpy().tolist() == [b"the cat"]


def test_the_tokenizer_keeps_its_vocabulary_in_its_config_and_refuses_a_bad_one():
    from keras_ssl.errors import UserError

    tokenizer = WordTokenizer(word_vocabulary(CORPUS), sequence_length=7, add_ends=True)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(tokenizer))
    assert again.get_vocabulary() == tokenizer.get_vocabulary() and again.sequence_length == 7 and again.add_ends
    np.testing.assert_array_equal(again(CORPUS), tokenizer(CORPUS))
    with pytest.raises(UserError, match="starts with the special tokens"):
        WordTokenizer(["cat", "dog"])
    with pytest.raises(UserError, match="'two words' is empty or holds white space"):
        WordTokenizer([*SPECIAL_TOKENS, "two words"])
    with pytest.raises(UserError, match="'cat' appears twice"):
        WordTokenizer([*SPECIAL_TOKENS, "cat", "cat"])


LENGTH, DIM = 6, 4


class MeanOfWordVectors(MethodModel):
    """The smallest sequence model: the mean of the token vectors of the non-padding ids;
    it serves text (`serving_default`) and ids (`embed_tokens`)."""

    SUB_MODELS = ("vectors",)

    def __init__(self, tokenizer, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.vectors = keras.layers.Embedding(tokenizer.vocabulary_size(), DIM, name="vectors")
        self.vectors.build((None, LENGTH))
        self.build()

    def embed(self, ids):
        mask = tf.cast(ids != PAD_ID, tf.float32)[..., None]
        return tf.reduce_sum(self.vectors(ids) * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)

    def serving_endpoints(self, input_shape, threshold=None):
        from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput

        outputs = (ServingOutput("embedding", "float32", (DIM,), "mean word vector"),
                   ServingOutput("words", "string", (), "the tokens, padding dropped"))

        def function(ids):
            return {"embedding": self.embed(ids), "words": self.tokenizer.detokenize(ids)}

        return [Endpoint("serving_default", (ServingInput("text", "text", tokenizer=self.tokenizer),), outputs,
                         function),
                Endpoint("embed_tokens", (ServingInput("tokens", "tokens", shape=(LENGTH,),
                                                       vocabulary_size=self.tokenizer.vocabulary_size()),),
                         outputs, function)]


SERVE = BLOCK_KERAS + '''
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
out = {}
text = loaded.signatures["serving_default"](text=tf.constant([t.encode() for t in json.loads(sys.argv[2])]))
out["text"] = {k: (v.numpy().tolist() if v.dtype != tf.string else [s.decode() for s in v.numpy()])
               for k, v in text.items()}
ids = loaded.signatures["embed_tokens"](tokens=tf.constant(json.loads(sys.argv[3]), tf.int64))
out["tokens"] = ids["embedding"].numpy().tolist()
for name, kwargs in (("serving_default", dict(text=tf.constant([b"fine", b"caf\\xe9"]))),
                     ("embed_tokens", dict(tokens=tf.constant([[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 99]], tf.int64)))):
    try:
        loaded.signatures[name](**kwargs)
        out[name + "_refused"] = None
    except tf.errors.InvalidArgumentError as e:
        out[name + "_refused"] = [l for l in e.message.splitlines() if name + ":" in l][0].strip()
print(json.dumps(out))
'''


def test_text_and_token_ids_are_served_without_keras_and_the_vocabulary_is_an_asset(tmp_path):
    from keras_ssl.export import export_saved_model

    vocabulary = word_vocabulary(CORPUS)
    keras.utils.set_random_seed(0)
    tokenizer = WordTokenizer(vocabulary, sequence_length=LENGTH)
    model = MeanOfWordVectors(tokenizer)
    path = export_saved_model(model, str(tmp_path), "words", input_shape=(LENGTH,))
    with open(os.path.join(path, "assets", "vocabulary.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == vocabulary  # the asset the served lookup table reads
    with open(os.path.join(path, "assets.extra", "preprocessing.json")) as f:
        facts = json.load(f)
    assert "embedding_dim" in facts and "assets/vocabulary.txt" in facts["signatures"]["serving_default"]["inputs"][
        "text"]
    moved = str(tmp_path / "moved")
    os.rename(path, moved)  # the asset travels with the SavedModel, not a path of this process

    texts = ["The cat sat on the mat.", "A zebra!", "", "été café"]
    ids = np.asarray(tokenizer(texts))
    proc = subprocess.run([sys.executable, "-c", SERVE, moved, json.dumps(texts), json.dumps(ids.tolist())],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = model.embed(tf.constant(ids)).numpy()
    np.testing.assert_allclose(served["text"]["embedding"], expected, atol=1e-6)
    np.testing.assert_allclose(served["tokens"], expected, atol=1e-6)
    assert served["text"]["words"] == ["the cat sat on the mat", "[UNK] [UNK] !", "", "été café"]
    assert re.search(r"serving_default: texts that are not valid UTF-8 \(indices\): \[1\]; send text encoded",
                     served["serving_default_refused"]), served
    assert re.search(r"embed_tokens: token ids must be in \[0, \d+\) \(indices\): \[1\]",
                     served["embed_tokens_refused"]), served


def test_a_text_or_tokens_input_without_what_it_needs_is_refused_where_it_is_declared():
    from keras_ssl.models.endpoints import ServingInput

    with pytest.raises(ValueError, match="needs a tokenizer with a sequence_length"):
        ServingInput("text", "text", tokenizer=WordTokenizer(list(SPECIAL_TOKENS)))
    with pytest.raises(ValueError, match="needs its length and vocabulary size"):
        ServingInput("tokens", "tokens", shape=(8,))
    with pytest.raises(ValueError, match="every dimension fixed"):
        ServingInput("latent", "latent", shape=(None,))


def test_one_string_is_a_batch_of_one_and_a_token_the_split_cannot_make_is_refused():
    from keras_ssl.errors import UserError

    tokenizer = WordTokenizer(word_vocabulary(CORPUS), sequence_length=4)
    np.testing.assert_array_equal(tokenizer("the cat"), tokenizer(["the cat"]))
    for token in ("Cat", "cat's", "a-b"):
        with pytest.raises(UserError, match="can never come out of the split"):
            WordTokenizer([*SPECIAL_TOKENS, token])
    assert WordTokenizer([*SPECIAL_TOKENS, "Cat"], lowercase=False).vocabulary_size() == 6
