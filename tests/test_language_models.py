"""GPT and BERT (issue 33): BERT's masking against a NumPy check of its rules and
proportions, the Kneser-Ney baseline against a hand-computed example, both losses against
NumPy, generation (greedy = the argmax chain, deterministic per seed, independent of the
batch), and a GPT trained on a file of lines continuing a prompt from keras-ssl-generate (its
signatures are served by a process without keras_ssl in tests/test_method_contract.py)."""

import os
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.byte_pair import BYTE_OFFSET, BytePairTokenizer, train_byte_pair
from keras_ssl.data.masking import mlm_batches, mlm_mask
from keras_ssl.evaluation.ngram import KneserNey, unigram_baseline
from keras_ssl.text_encoders import build_text_encoder
from keras_ssl.tokenizers import BOS_ID, EOS_ID, MASK_ID, PAD_ID

LINES = [f"{a} {b} {c} the {d}." for a in ("The cat", "A dog", "My fox", "One cow") for b in ("sat", "ran", "slept")
         for c in ("near", "under", "on") for d in ("mat", "tree", "river", "barn")][:300]


def framed_ids(rows, length, vocabulary, seed=0):
    """Random texts framed [BOS] ... [EOS] with [PAD] after, lengths 0 to length-2."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, length), np.int32)
    for r in range(rows):
        n = int(rng.integers(0, length - 1))
        ids[r, :n + 2] = [BOS_ID, *rng.integers(BYTE_OFFSET, vocabulary, n), EOS_ID]
    return ids


def test_packed_windows_hold_every_text_once_per_copy_in_a_new_order_without_padding():
    from keras_ssl.data.text import packed_windows
    from keras_ssl.errors import UserError

    ids = framed_ids(50, 12, 300)
    texts = [tuple(row[row != PAD_ID]) for row in ids]
    stream_tokens = sum(len(t) for t in texts)
    windows = packed_windows(ids, 8, seed=3, copies=2)
    n = stream_tokens // 8
    assert windows.shape == (2 * n, 8) and windows.dtype == np.int32 and not (windows == PAD_ID).any()
    copies = [windows[:n].ravel(), windows[n:].ravel()]
    for stream in copies:  # each copy: the texts end to end, the last tokens cut off
        starts = np.flatnonzero(stream == BOS_ID)
        whole = [tuple(stream[a:b]) for a, b in zip(starts[:-1], starts[1:])]
        assert stream[0] == BOS_ID and not Counter(whole) - Counter(texts)  # whole texts, each once
        assert len(whole) >= len(texts) - 1 - 8 // 2  # all but those in the cut-off tail
    assert not np.array_equal(copies[0], copies[1])  # a new order per copy (epoch)
    np.testing.assert_array_equal(packed_windows(ids, 8, seed=3, copies=2), windows)  # deterministic per seed
    with pytest.raises(UserError, match="fewer than one packed window"):
        packed_windows(ids[:1], 100)


def test_mlm_mask_selects_15_percent_and_corrupts_80_10_10_never_the_frame():
    vocabulary = 400
    ids = framed_ids(4000, 40, vocabulary)
    inputs, targets = (t.numpy() for t in mlm_mask(ids, [3, 7], vocabulary))
    selectable = (ids != PAD_ID) & (ids != BOS_ID) & (ids != EOS_ID)
    selected = targets != PAD_ID
    # the rules, checked row by row in NumPy
    m = selectable.sum(1)
    want = np.where(m > 0, np.maximum(1, np.floor(0.15 * m + 0.5)), 0)
    np.testing.assert_array_equal(selected.sum(1), want)
    assert not (selected & ~selectable).any()  # never [PAD], [BOS], [EOS]
    np.testing.assert_array_equal(targets[selected], ids[selected])
    np.testing.assert_array_equal(inputs[~selected], ids[~selected])
    # the proportions (about 18,000 selected tokens: 3 standard deviations are under 1%)
    masked = inputs[selected] == MASK_ID
    kept = inputs[selected] == ids[selected]
    randomised = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.01 and abs(randomised.mean() - 0.1 * (1 - 1 / (vocabulary - BYTE_OFFSET))) \
        < 0.01 and abs(kept.mean() - 0.1) < 0.01, (masked.mean(), kept.mean())
    assert (inputs[selected][randomised] >= BYTE_OFFSET).all() and (inputs[selected][randomised] < vocabulary).all()
    # each selectable position is equally likely: the first and the last token of a text alike
    first = selected[np.arange(len(ids)), 1][m >= 10].mean()
    last = selected[np.arange(len(ids)), np.maximum(m, 1)][m >= 10].mean()
    assert abs(first - last) < 0.04 and abs(first - selected.sum() / m.sum()) < 0.04
    # stateless: the same seed, the same mask; another seed, another
    again = mlm_mask(ids, [3, 7], vocabulary)[0].numpy()
    np.testing.assert_array_equal(again, inputs)
    assert (mlm_mask(ids, [3, 8], vocabulary)[1].numpy() != targets).any()
    batches = iter(mlm_batches(ids[:16], 8, vocabulary, shuffle=False))
    (a, _), _, (c, _) = next(batches), next(batches), next(batches)
    assert (a.numpy() != c.numpy()).any()  # the same texts come back masked otherwise


def test_kneser_ney_matches_a_hand_computed_bigram_example_and_sums_to_one():
    # texts [BOS] a b [EOS] and [BOS] a a [EOS]; a = 5, b = 6, V = 7, D = 1/2
    a, b = 5, 6
    model = KneserNey(7, order=2, discount=0.5).fit([[BOS_ID, a, b, EOS_ID], [BOS_ID, a, a, EOS_ID]])
    # continuation counts N(. w): a after {BOS, a} = 2, b after {a} = 1, EOS after {b, a} = 2; total 5, 3 types
    # P1(w) = max(N(. w) - 1/2, 0) / 5 + (1/2 * 3 / 5) / 7
    p1 = {a: Fraction(3, 10) + Fraction(3, 70), b: Fraction(1, 10) + Fraction(3, 70),
          EOS_ID: Fraction(3, 10) + Fraction(3, 70)}
    assert model.probability([7], a) == pytest.approx(float(p1[a]))  # an unseen context backs off
    assert model.probability([4], 1) == pytest.approx(3 / 70)  # an unseen token: the uniform share
    # P2(a | BOS) = (2 - 1/2) / 2 + (1/2 * 1 / 2) P1(a); P2(EOS | a) = (1 - 1/2) / 3 + (1/2 * 3 / 3) P1(EOS)
    assert model.probability([BOS_ID], a) == pytest.approx(float(Fraction(3, 4) + Fraction(1, 4) * p1[a]))
    assert model.probability([a], EOS_ID) == pytest.approx(float(Fraction(1, 6) + Fraction(1, 2) * p1[EOS_ID]))
    assert float(Fraction(3, 4) + Fraction(1, 4) * p1[a]) == pytest.approx(117 / 140)
    # a trigram model with estimated discounts: every P(. | h) sums to 1, and it beats uniform on its data
    ids = framed_ids(200, 12, 40, seed=1)
    trigram = KneserNey(40, order=3).fit(ids)
    for context in ([BOS_ID], [BOS_ID, 7], [9, 11], [39, 39], []):
        assert sum(trigram.probability(context, w) for w in range(40)) == pytest.approx(1.0)
    assert trigram.perplexity(ids) < 40 and 0 < trigram.discounts[3] < 1
    nll, count = trigram.log_likelihood(ids)
    assert count == int((ids != PAD_ID).sum() - len(ids))  # every token after [BOS], as GPT's perplexity


def test_the_unigram_baseline_is_the_training_frequencies():
    train = np.array([[BOS_ID, 7, 7, 8, EOS_ID, PAD_ID]])
    targets = np.array([[PAD_ID, 7, PAD_ID, 8, PAD_ID, PAD_ID]])
    result = unigram_baseline(train, targets, 10)
    p = (np.bincount([7, 7, 8], minlength=10) + 1.0) / 13.0  # add-one over 10 tokens
    assert result["unigram_masked_loss"] == pytest.approx(-(np.log(p[7]) + np.log(p[8])) / 2)
    assert result["unigram_masked_accuracy"] == 0.5


@pytest.fixture(scope="module")
def tokenizer():
    return BytePairTokenizer(train_byte_pair(LINES, 320), sequence_length=16, add_ends=True)


def _encoder(tokenizer):
    keras.utils.set_random_seed(0)
    return build_text_encoder("transformer_small", 320, 16, width_multiplier=0.25)


def _log_softmax(logits):
    logits = logits - logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _numpy_logits(model, ids):
    from keras_ssl.text_encoders import encode_sequence, token_embedding

    h = encode_sequence(model.encoder, tf.constant(ids)).numpy().astype(np.float64)
    return h @ token_embedding(model.encoder).numpy().astype(np.float64).T


def test_the_gpt_and_bert_losses_equal_numpy(tokenizer):
    from keras_ssl.models import BERT, GPT

    ids = tokenizer(LINES[:6]).numpy()
    gpt = GPT(_encoder(tokenizer), tokenizer, dropout=0.0)
    logp = _log_softmax(_numpy_logits(gpt, ids))
    per_text = []
    for r in range(len(ids)):
        terms = [-logp[r, i, ids[r, i + 1]] for i in range(ids.shape[1] - 1) if ids[r, i + 1] != PAD_ID]
        per_text.append(np.mean(terms))
    assert float(gpt.method_loss(tf.constant(ids), training=False)) == pytest.approx(np.mean(per_text), rel=1e-4)

    bert = BERT(_encoder(tokenizer), tokenizer, dropout=0.0)
    inputs, targets = (t.numpy() for t in mlm_mask(ids, [0, 1], tokenizer.vocabulary_size()))
    logp = _log_softmax(_numpy_logits(bert, inputs))
    per_text = [np.mean([-logp[r, i, targets[r, i]] for i in np.nonzero(targets[r])[0]]) for r in range(len(ids))]
    loss = bert.method_loss((tf.constant(inputs), tf.constant(targets)), training=False)
    assert float(loss) == pytest.approx(np.mean(per_text), rel=1e-4)
    np.testing.assert_allclose(bert.token_logits(inputs).numpy(),
                               _numpy_logits(bert, inputs)[..., :tokenizer.vocabulary_size()], atol=1e-4)


def test_generation_is_the_argmax_chain_when_greedy_and_fixed_by_its_seed(tokenizer):
    from keras_ssl.models import GPT

    gpt = GPT(_encoder(tokenizer), tokenizer, dropout=0.0, max_new_tokens=5)
    prompt = "The cat sat"
    ids = tokenizer([prompt]).numpy()
    n = int(np.argmax(ids[0] == EOS_ID))
    chain = ids[0, :n].tolist()
    for _ in range(5):  # NumPy's greedy chain over the allowed tokens (ordinary ones and [EOS])
        logits = gpt.token_logits(np.array([chain + [PAD_ID] * (16 - len(chain))])).numpy()[0, len(chain) - 1]
        logits[[PAD_ID, 1, BOS_ID, MASK_ID]] = -np.inf
        chain.append(int(np.argmax(logits)))
        if chain[-1] == EOS_ID:
            break
    want = tokenizer.detokenize([chain[n:]]).numpy()[0].decode("utf-8", "replace")
    assert gpt.generate(prompt, greedy=True) == [want]
    assert gpt.generate(prompt, seeds=5, top_k=1) == [want]  # k = 1 is greedy whatever the noise
    sampled = gpt.generate([prompt, "A dog", prompt], seeds=[1, 2, 3])
    assert gpt.generate([prompt], seeds=[1]) == sampled[:1]  # a row does not depend on its batch
    assert gpt.generate([prompt, "A dog", prompt], seeds=[1, 2, 3]) == sampled
    assert len({tuple(gpt.generate([prompt] * 4, seeds=[s] * 4)) for s in range(4)}) > 1


def test_gpt_trains_on_a_file_of_lines_and_keras_ssl_generate_continues_a_prompt(tmp_path):
    """`--dataset=text:FILE` trains in seconds; the exported signatures (tokenize, token_logits,
    generate, generate_greedy) are served without keras_ssl and equal to the model in
    tests/test_method_contract.py, which runs every registered method."""
    from keras_ssl.saving import load_model
    from keras_ssl.training import TrainConfig, train

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES) + "\n")
    run = str(tmp_path / "run")
    train(TrainConfig.from_dict(dict(method="gpt", dataset=f"text:{lines}", model_dir=run, width_multiplier=0.25,
                                     sequence_length=24, vocabulary_size=320, batch_size=16, epochs=1,
                                     steps_per_epoch=3, learning_rate=1e-3, warmup_epochs=0.0, verbose=0,
                                     dropout=0.0, max_new_tokens=6, dtype_policy="float32")))
    model = load_model(os.path.join(run, "model.keras"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "keras_ssl.bin.generate", f"--model_dir={run}", "--prompt=The cat",
                           "--seed=1", "--samples=2"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = model.generate(["The cat", "The cat"], seeds=[1, 2])
    assert proc.stdout.strip().splitlines()[-2:] == [f"[seed 1] The cat{want[0]}", f"[seed 2] The cat{want[1]}"]


def test_bert_trains_on_packed_windows_or_one_padded_text_per_row(tmp_path):
    from keras_ssl.training import load_run_dataset, method_data
    from tests.helpers import smoke_config

    for packed in (True, False):
        config = smoke_config("bert", tmp_path, pack_texts=packed, epochs=2)
        dataset = load_run_dataset(config)
        data = method_data(config, dataset.train)
        inputs, targets = (t.numpy() for t in next(iter(data.dataset)))
        assert inputs.shape == targets.shape == (config.batch_size, config.settings.sequence_length)
        selected = targets != PAD_ID
        assert selected.any() and not (selected & (inputs == PAD_ID)).any()  # padding is never a target
        if packed:  # full windows: no padding at all, several texts in a window
            assert data.unit == "windows" and not (inputs == PAD_ID).any()
            assert (inputs == BOS_ID).sum() > config.batch_size
        else:
            assert data.unit is None and (inputs == PAD_ID).any()
