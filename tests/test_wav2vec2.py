"""wav2vec 2.0 (`--method=wav2vec2`): the span mask, the distractors, the contrastive and
diversity losses against NumPy written apart from them; the Gumbel quantiser's
straight-through selection and its temperature; the speech Transformer's parts; the
feature encoder's gradient scale; a tiny fit, its round trip and what it serves.

One device vs two replicas, mixed precision and the method contract (train, resume,
evaluate, export, every signature served in a process without keras_ssl) come from the
registry-driven tests (test_distributed_methods.py, test_method_contract*.py)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.data.masking import span_mask
from keras_ssl.gumbel_quantizer import (PAPER_ANNEALED_SHARE, GumbelVectorQuantizer, gumbel_noise, gumbel_softmax,
                                        gumbel_temperature)
from keras_ssl.models.wav2vec2 import Wav2Vec2
from keras_ssl.speech_transformer import (ConvPositionalEmbedding, MaskEmbedding, feature_encoder, feature_frames,
                                          speech_transformer)
from tests.helpers import check_speech_model_serves_its_block, speech_clips

# -- the span mask ---------------------------------------------------------------------------


def numpy_spans(starts, span):
    """The rule written out: frame t is masked when a span starts at one of t - span + 1 .. t."""
    masked = np.zeros_like(starts, bool)
    for b, t in zip(*np.nonzero(starts)):
        masked[b, t:t + span] = True  # cut at the end of the row
    return masked


def test_span_mask_is_the_union_of_spans_from_frames_drawn_with_probability_p():
    seed = [5, 9]
    batch, length, p, span = 300, 30, 0.065, 10
    got = span_mask(batch, length, p, span, seed).numpy()
    assert got.dtype == bool and got.shape == (batch, length)
    starts = tf.random.stateless_uniform([batch, length], seed).numpy() < p  # the draw: one uniform per frame
    np.testing.assert_array_equal(got, numpy_spans(starts, span), err_msg=f"seed {seed}")
    assert got[:, -1].any() and got[:, 0].any()  # the first and the last frame can be masked


def test_span_mask_rates_are_the_papers():
    """P(t masked) = 1 - (1 - p)^min(t + 1, M): 48.9% from frame 9 on, 6.5% at frame 0."""
    rows, length, p, span = 6000, 49, 0.065, 10
    masked = span_mask(rows, length, p, span, 11).numpy()
    want = 1 - (1 - p) ** np.minimum(np.arange(length) + 1, span)
    sd = np.sqrt(want * (1 - want) / rows)
    assert np.all(np.abs(masked.mean(0) - want) < 5 * sd), (masked.mean(0), want)  # every frame, the last too
    assert abs(masked[:, span - 1:].mean() - 0.4894) < 0.005  # the paper's "about 49%"
    assert abs(masked.mean() - np.mean(want)) < 0.005  # 45.0% of a 1 s clip
    # spans of 1 frame: each frame masked with probability p; p = 1: everything
    assert abs(span_mask(rows, length, 0.2, 1, 3).numpy().mean() - 0.2) < 0.005
    assert span_mask(4, 7, 1.0, 3, 0).numpy().all() and not span_mask(4, 7, 0.0, 3, 0).numpy().any()


def test_span_mask_is_deterministic_per_seed_of_any_form():
    a = span_mask(8, 40, 0.1, 5, 7).numpy()
    np.testing.assert_array_equal(a, span_mask(8, 40, 0.1, 5, [7, 0]).numpy())  # an int is the pair (seed, 0)
    np.testing.assert_array_equal(a, span_mask(tf.constant(8), tf.constant(40), 0.1, 5, tf.constant(7)).numpy())
    assert (a != span_mask(8, 40, 0.1, 5, 8).numpy()).any()
    with pytest.raises(ValueError, match="mask_prob"):
        span_mask(2, 5, 1.5, 2, 0)


# -- distractors ----------------------------------------------------------------------------


def test_distractors_are_other_masked_frames_of_the_same_clip_uniformly():
    mask = np.zeros((3, 12), bool)
    mask[0, [0, 3, 4, 5, 11]] = True  # the first and the last frame masked
    mask[1, [6]] = True  # one masked frame: no distractor to draw
    mask[2, [2, 9]] = True  # two: each is the other's only distractor
    seed = [3, 1]
    rows = losses.sample_distractors(tf.constant(mask), 4000, seed).numpy()
    valid = losses.contrastive_valid(tf.constant(mask)).numpy()
    np.testing.assert_array_equal(valid, mask & (mask.sum(1, keepdims=True) >= 2))
    for b, t in zip(*np.nonzero(valid)):
        drawn = rows[b, t]
        assert (drawn != t).all(), (b, t)  # never the positive
        assert mask[b, drawn].all(), (b, t)  # always a masked frame of the row
        others = [s for s in np.nonzero(mask[b])[0] if s != t]
        counts = np.array([(drawn == s).sum() for s in others])
        expected = len(drawn) / len(others)
        sd = math.sqrt(expected * (1 - 1 / len(others)))
        assert np.all(np.abs(counts - expected) <= 5 * sd), (b, t, counts)  # uniform, first and last included
    assert (rows[~valid] == np.broadcast_to(np.arange(12), (3, 12))[~valid][:, None]).all()  # own index: unused


def test_the_contrastive_loss_draws_distractors_from_the_same_clip_only():
    """Clip 1's targets all equal clip 0's context: were clip 0's distractors drawn from clip 1
    they would score as high as the positive. From its own clip (orthogonal targets) the loss
    is log(e^10 + K) - 10 exactly (cosine 1 / 0.1 for the positive, 0 for each of K draws)."""
    k, length, width = 6, 5, 8
    eye = np.eye(width, dtype=np.float32)
    context = np.zeros((2, length, width), np.float32)
    context[0] = eye[0]
    targets = np.zeros((2, length, width), np.float32)
    targets[0] = eye[1:1 + length]  # clip 0: the target of frame t is e_{t+1}, orthogonal to the others
    targets[0, 2] = eye[0]  # ... but the positive of frame 2 is its context
    targets[1] = eye[0]
    context[1] = eye[3]
    mask = np.zeros((2, length), bool)
    mask[0, [1, 2, 4]] = True
    mask[1, [0, 3]] = True
    rows = losses.sample_distractors(tf.constant(mask), k, [0, 0])
    terms, correct, valid = (t.numpy() for t in losses.wav2vec2_contrastive_terms(context, targets, rows, mask, 0.1))
    np.testing.assert_allclose(terms[0, 2], math.log(math.exp(10.0) + k) - 10.0, rtol=1e-5, atol=1e-6)
    assert correct[0, 2] and valid[0, 2] and not valid[0, 0] and terms[0, 0] == 0.0


# -- the losses against NumPy ---------------------------------------------------------------


def numpy_contrastive(context, targets, rows, valid, temperature, codes):
    """Per frame, loop by loop: cosine logits of the positive and the K drawn frames (those
    with the positive's codes in every group left out), -log softmax of the positive."""
    out = np.zeros(valid.shape)
    correct = np.zeros(valid.shape, bool)
    for b, t in zip(*np.nonzero(valid)):
        def cos(u, v):
            return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

        positive = cos(context[b, t], targets[b, t]) / temperature
        negatives = [cos(context[b, t], targets[b, s]) / temperature for s in rows[b, t]
                     if not np.array_equal(codes[b, s], codes[b, t])]
        logits = np.array([positive] + negatives, np.float64)
        out[b, t] = np.log(np.exp(logits - logits.max()).sum()) + logits.max() - positive
        correct[b, t] = not negatives or positive > max(negatives)
    return out, correct


def test_contrastive_terms_match_numpy():
    rng = np.random.default_rng(1234)
    batch, length, width, k = 3, 14, 6, 9
    context = rng.normal(size=(batch, length, width)).astype(np.float32)
    targets = rng.normal(size=(batch, length, width)).astype(np.float32)
    mask = rng.random((batch, length)) < 0.5
    mask[0, :2] = True
    codes = rng.integers(0, 2, size=(batch, length, 2))  # 4 code pairs: many distractors share the positive's
    rows = rng.integers(0, length, size=(batch, length, k))  # any rows: the loss takes them as given
    valid = mask & (mask.sum(1, keepdims=True) >= 2)
    terms, correct, got_valid = losses.wav2vec2_contrastive_terms(context, targets, rows, mask, 0.1, codes)
    want, want_correct = numpy_contrastive(context.astype(np.float64), targets.astype(np.float64), rows, valid, 0.1,
                                           codes)
    np.testing.assert_array_equal(got_valid.numpy(), valid)
    np.testing.assert_allclose(terms.numpy(), want, rtol=1e-4, atol=1e-5, err_msg="seed 1234")
    np.testing.assert_array_equal(correct.numpy(), want_correct)
    assert terms.dtype == tf.float32  # bfloat16 inputs too
    low, _, _ = losses.wav2vec2_contrastive_terms(tf.constant(context, tf.bfloat16), tf.constant(targets, tf.bfloat16),
                                                  rows, mask, 0.1, codes)
    assert low.dtype == tf.float32 and np.all(np.isfinite(low.numpy()))


def numpy_diversity(p):
    """(G V - sum_g exp(-sum_v pbar log pbar)) / (G V), pbar the mean over the N frames."""
    mean = p.astype(np.float64).mean(axis=0)
    entropy = -np.sum(np.where(mean > 0, mean * np.log(np.where(mean > 0, mean, 1.0)), 0.0), axis=-1)
    gv = p.shape[1] * p.shape[2]
    return (gv - np.exp(entropy).sum()) / gv


def test_codebook_diversity_matches_numpy_and_its_ends():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(50, 2, 12)) * 2.0
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(losses.codebook_diversity(p).numpy(), numpy_diversity(p), rtol=1e-5, err_msg="seed 7")
    uniform = np.full((4, 2, 5), 0.2)
    assert abs(float(losses.codebook_diversity(uniform))) < 1e-6  # every entry used equally: 0
    one = np.zeros((4, 2, 5))
    one[:, :, 3] = 1.0  # each group always the same entry: (10 - 2) / 10 = 1 - 1/V
    np.testing.assert_allclose(losses.codebook_diversity(one).numpy(), 0.8, rtol=1e-6)
    half = np.zeros((2, 1, 4))
    half[0, 0, 0] = half[1, 0, 1] = 1.0  # two entries of four, evenly: perplexity 2, (4 - 2) / 4
    np.testing.assert_allclose(losses.codebook_diversity(half).numpy(), 0.5, rtol=1e-6)
    x = tf.constant(one)  # unused entries: zero probabilities, a finite gradient
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = losses.codebook_diversity(x)
    assert np.all(np.isfinite(tape.gradient(value, x).numpy()))


# -- the Gumbel quantiser ----------------------------------------------------------------------


def test_gumbel_softmax_is_hard_forward_and_soft_backward():
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(size=(6, 2, 5)), tf.float32)
    noise = gumbel_noise(tf.shape(logits), [4, 2])
    tau = 0.7
    weights = tf.constant(rng.normal(size=(6, 2, 5)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        hard = gumbel_softmax(logits, noise, tau)
        soft = gumbel_softmax(logits, noise, tau, hard=False)
        hard_sum, soft_sum = tf.reduce_sum(hard * weights), tf.reduce_sum(soft * weights)
    y = (logits + noise).numpy()
    np.testing.assert_array_equal(hard.numpy(), np.eye(5)[y.argmax(-1)])  # forward: the one-hot argmax
    # backward: the softmax's Jacobian (diag(p) - p p^T) / tau, written in NumPy
    p = np.exp(y / tau) / np.exp(y / tau).sum(-1, keepdims=True)
    w = weights.numpy()
    want = p * (w - (w * p).sum(-1, keepdims=True)) / tau
    np.testing.assert_allclose(tape.gradient(hard_sum, logits).numpy(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(soft_sum, logits).numpy(), want, rtol=1e-4, atol=1e-6)


def test_gumbel_max_draws_entries_with_their_softmax_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    n = 20000
    noise = gumbel_noise([n, 4], [1, 2]).numpy()
    assert abs(noise.mean() - 0.5772) < 0.03 and abs(noise.std() - math.pi / math.sqrt(6)) < 0.03  # Gumbel(0, 1)
    counts = np.bincount((logits + noise).argmax(-1), minlength=4) / n
    assert np.all(np.abs(counts - np.exp(logits)) < 5 * np.sqrt(np.exp(logits) / n)), counts


def test_quantizer_concatenates_one_entry_per_group():
    q = GumbelVectorQuantizer(groups=2, entries=3, code_dim=4)
    latents = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
    out = q(latents).numpy()
    codes = q.codes(latents).numpy()
    book = q.codebook.numpy()  # [G, V, code_dim / G]
    want = np.concatenate([book[0][codes[..., 0]], book[1][codes[..., 1]]], axis=-1)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    logits = q.logits(latents).numpy()
    np.testing.assert_array_equal(codes, logits.argmax(-1))
    assert out.dtype == np.float32 and logits.shape == (2, 5, 2, 3)


def test_gumbel_temperature_anneals_from_2_to_half_over_the_run():
    total = 1000
    at = [float(gumbel_temperature(s, total)) for s in (0, 1, int(PAPER_ANNEALED_SHARE * total), total)]
    assert at[0] == pytest.approx(2.0) and at[1] < 2.0 and at[2] == pytest.approx(0.5, rel=1e-3) and at[3] == 0.5
    assert abs(PAPER_ANNEALED_SHARE - 0.693) < 0.001  # 2 x 0.999995^n = 0.5 at n = 277,259 of 400k updates
    assert float(gumbel_temperature(10000)) == pytest.approx(2 * 0.999995 ** 10000)  # no run length: the paper's
    assert float(gumbel_temperature(10, decay=0.5, start=3.0, end=0.1)) == pytest.approx(max(0.1, 3 * 0.5 ** 10))


# -- the speech Transformer ---------------------------------------------------------------------


def test_feature_encoder_makes_a_frame_per_20_ms():
    encoder = feature_encoder(8)
    for samples, frames in ((16000, 49), (4000, 12), (400, 1), (719, 1), (720, 2)):
        assert feature_frames(samples) == frames
        assert encoder(np.zeros((1, samples), np.float32)).shape == (1, frames, 8)
    assert [layer.strides[0] for layer in encoder.layers if isinstance(layer, keras.layers.Conv1D)] == \
        [5, 2, 2, 2, 2, 2, 2]


def test_position_convolution_is_grouped_and_looks_63_back_64_ahead():
    layer = ConvPositionalEmbedding(kernel=4, groups=2)
    x = np.random.default_rng(5).normal(size=(2, 7, 4)).astype(np.float32)
    got = layer(x).numpy()
    w, bias = layer.filters.numpy(), layer.bias.numpy()  # [K, D / G, D]
    padded = np.pad(x, [(0, 0), (1, 2), (0, 0)])  # "same" for an even kernel: 1 back, 2 ahead
    conv = np.zeros_like(x)
    for t in range(7):
        for o in range(4):
            g = o // 2  # output channel o reads input channels of its group only
            conv[:, t, o] = np.einsum("bki,ki->b", padded[:, t:t + 4, 2 * g:2 * g + 2], w[:, :, o]) + bias[o]
    gelu = 0.5 * conv * (1 + np.vectorize(math.erf)(conv / math.sqrt(2)))
    np.testing.assert_allclose(got, x + gelu, rtol=1e-4, atol=1e-5)


def test_mask_embedding_replaces_the_masked_frames_only():
    layer = MaskEmbedding()
    x = np.random.default_rng(2).normal(size=(2, 4, 3)).astype(np.float32)
    masked = np.array([[True, False, False, True], [False, False, False, False]])
    out = layer(x, masked).numpy()
    np.testing.assert_array_equal(out[~masked], x[~masked])
    np.testing.assert_array_equal(out[masked], np.broadcast_to(layer.embedding.numpy(), (2, 3)))
    np.testing.assert_array_equal(layer(x).numpy(), x)


# -- the model -----------------------------------------------------------------------------------


def _tiny(**kwargs):
    keras.utils.set_random_seed(0)
    options = dict(codebook_entries=8, code_dim=8, final_dim=8, num_negatives=6, mask_prob=0.3, mask_span=3,
                   num_samples=4000, dropout=0.0)
    options.update(kwargs)
    return Wav2Vec2(speech_transformer(8, 16, 2, 2, 0.0, 4, 4), **options)


def test_the_feature_encoders_gradient_is_scaled():
    """One SGD step from the same weights with scale 0.1 and 1: the feature encoder's
    weights move a tenth as far, every other weight the same."""
    x = speech_clips(8)
    moved = {}
    for scale in (0.1, 1.0):
        model = _tiny(feature_gradient_scale=scale)
        if scale == 1.0:
            model.set_weights(start)
        else:
            start = model.get_weights()
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        model.fit(x, batch_size=8, epochs=1, verbose=0, shuffle=False)
        moved[scale] = [a - b for a, b in zip(model.get_weights(), start)]
        encoder_ids = {id(v) for v in model.encoder.get_layer("feature_encoder").weights}
        in_encoder = [id(v) in encoder_ids for v in model.weights]
    assert any(in_encoder) and not all(in_encoder)
    for small, full, inside in zip(moved[0.1], moved[1.0], in_encoder):
        np.testing.assert_allclose(small, 0.1 * full if inside else full, rtol=1e-3, atol=1e-7)
    assert max(np.abs(m).max() for m, inside in zip(moved[1.0], in_encoder) if inside) > 0


def test_fit_learns_round_trips_and_serves_the_chosen_layer(tmp_path):
    x = speech_clips(48)
    model = _tiny(representation_layer=1)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(x, batch_size=16, epochs=6, verbose=0).history
    assert history["contrastive_loss"][-1] < history["contrastive_loss"][0] - 0.1, history["contrastive_loss"]
    assert 0.3 < np.mean(history["masked_fraction"]) < 0.7  # p = 0.3, spans of 3 on 12 frames
    assert history["code_perplexity"][-1] > 1.0 and np.isfinite(history["loss"]).all()
    with pytest.raises(Exception, match="no use for targets y"):
        model.fit(x, np.zeros(48), batch_size=16, verbose=0)
    check_speech_model_serves_its_block(model, x[:3], 1)
    task = model.task_metrics(x, batch_size=16)
    assert 0.0 <= task["contrastive_accuracy"] <= 1.0 and task["masked_frames"] > 0
    assert 1.0 <= task["code_perplexity"] <= 16.0  # G x V at most
    path = str(tmp_path / "wav2vec2.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x[:3], verbose=0), model.predict(x[:3], verbose=0), atol=1e-5)
    assert restored.representation_layer == 1 and restored.codebook_entries == 8
