"""HuBERT (`--method=hubert`, `--method=hubert_iter2`): the loss against NumPy written apart
from it (masked frames only, and with a weight on the unmasked ones); MFCC frames aligned
with the speech encoder's; k-means targets deterministic per seed; the purity and PNMI
against NumPy; a tiny fit, its refusals, round trip and what it serves; the second
iteration's targets are the k-means of its parent's chosen block.

One device vs two replicas, mixed precision and the method contract (train, resume,
evaluate, export, every signature served in a process without keras_ssl) come from the
registry-driven tests (test_distributed_methods.py, test_method_contract*.py)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.audio_encoders import mfcc
from keras_ssl.data.mfcc_targets import (assign_clusters, batched_frames, cluster_purity, deltas, fit_kmeans,
                                         mfcc_frames, pnmi)
from keras_ssl.errors import UserError
from keras_ssl.models.hubert import HuBERT
from keras_ssl.speech_transformer import feature_encoder, feature_frames, speech_features, speech_transformer
from tests.helpers import check_speech_model_serves_its_block, speech_clips

# -- the loss against NumPy ----------------------------------------------------------------------


def numpy_hubert_loss(projected, embeddings, targets, mask, temperature, unmasked_weight):
    """Frame by frame: the cosine of the frame with every cluster's embedding / tau, the
    log-softmax of the target, averaged over the masked (and, weighted, the unmasked) frames."""
    masked, unmasked = [], []
    for b, t in np.ndindex(*targets.shape):
        o = projected[b, t]
        logits = np.array([o @ e / np.linalg.norm(o) / np.linalg.norm(e) for e in embeddings]) / temperature
        nll = np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[targets[b, t]]
        (masked if mask[b, t] else unmasked).append(nll)
    return np.mean(masked) + unmasked_weight * np.mean(unmasked)


@pytest.mark.parametrize("unmasked_weight", [0.0, 0.5])
def test_the_loss_matches_numpy(unmasked_weight):
    rng = np.random.default_rng(21)
    batch, length, dim, clusters = 3, 9, 5, 7
    projected = rng.normal(size=(batch, length, dim)).astype(np.float32)
    embeddings = rng.uniform(size=(clusters, dim)).astype(np.float32)  # U(0, 1): fairseq's initialisation
    targets = rng.integers(0, clusters, size=(batch, length))
    mask = rng.random((batch, length)) < 0.4
    logits = losses.hubert_logits(projected, embeddings, 0.1)
    got = losses.hubert_loss(logits, targets, mask, unmasked_weight)
    want = numpy_hubert_loss(projected.astype(np.float64), embeddings.astype(np.float64), targets, mask, 0.1,
                             unmasked_weight)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, err_msg="seed 21")
    assert logits.dtype == tf.float32 and got.dtype == tf.float32
    low = losses.hubert_loss(losses.hubert_logits(tf.constant(projected, tf.bfloat16), embeddings, 0.1), targets,
                             mask, unmasked_weight)
    assert low.dtype == tf.float32 and abs(float(low) - want) < 0.1  # bfloat16 frames: close, in float32


def test_the_loss_ignores_unmasked_frames_unless_weighted():
    rng = np.random.default_rng(4)
    logits = tf.constant(rng.normal(size=(2, 6, 4)), tf.float32)
    targets = rng.integers(0, 4, size=(2, 6))
    mask = np.zeros((2, 6), bool)
    mask[:, 1:3] = True
    changed = np.where(mask, targets, (targets + 1) % 4)  # other targets at the unmasked frames only
    assert float(losses.hubert_loss(logits, targets, mask)) == float(losses.hubert_loss(logits, changed, mask))
    assert float(losses.hubert_loss(logits, targets, mask, 1.0)) != float(losses.hubert_loss(logits, changed, mask,
                                                                                              1.0))
    assert float(losses.hubert_loss(logits, targets, np.zeros((2, 6), bool))) == 0.0  # no masked frame: 0


# -- MFCC frames aligned with the encoder's --------------------------------------------------------


def numpy_deltas(x, window=2):
    """Kaldi's deltas along axis 1, the edge frames repeated."""
    t = x.shape[1]
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(t):
        for n in range(1, window + 1):
            out[:, i] += n * (x[:, min(i + n, t - 1)] - x[:, max(i - n, 0)])
    return out / (2 * sum(n * n for n in range(1, window + 1)))


def test_mfcc_frames_match_the_encoders_frames_clip_by_clip():
    encoder = feature_encoder(4)
    rng = np.random.default_rng(0)
    for samples in (400, 719, 720, 1039, 4000, 16000, 16321):
        x = rng.normal(size=(2, samples)).astype(np.float32) * 0.3
        frames = mfcc_frames(x).numpy()
        assert frames.shape == (2, feature_frames(samples), 39) == (2, encoder(x).shape[1], 39), samples
    x = rng.normal(size=(2, 4000)).astype(np.float32) * 0.3
    got = mfcc_frames(x).numpy()
    coefficients = mfcc(x).numpy()  # every 10 ms: frame 2t covers samples 320t .. 320t + 399, encoder frame t's
    d = numpy_deltas(coefficients)
    want = np.concatenate([coefficients, d, numpy_deltas(d)], axis=-1)[:, ::2][:, :feature_frames(4000)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deltas(coefficients).numpy(), d, rtol=1e-5, atol=1e-5)
    # frame t depends on samples 320t .. 320t + 399 only, as the encoder's frame t does
    moved = x.copy()
    moved[:, 320 * 5:320 * 5 + 400] += 0.5
    changed = np.abs(mfcc(moved).numpy()[:, ::2] - coefficients[:, ::2]).max(axis=(0, 2)) > 1e-6
    assert changed[5] and not changed[:3].any() and not changed[8:].any()


# -- k-means and purity --------------------------------------------------------------------------


def test_kmeans_targets_are_deterministic_per_seed():
    rng = np.random.default_rng(3)
    frames = (rng.normal(size=(40, 12, 6)) + 4 * rng.normal(size=(5, 6))[rng.integers(0, 5, size=(40, 12))]).astype(
        np.float32)
    first = fit_kmeans(frames, 8, seed=0, inits=2)
    again = fit_kmeans(frames, 8, seed=0, inits=2)
    other = fit_kmeans(frames, 8, seed=1, inits=2)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (8, 6) and first.dtype == np.float32 and not np.array_equal(first, other)
    targets = assign_clusters(frames, first)
    assert targets.shape == (40, 12) and targets.dtype == np.int32
    brute = np.argmin(((frames[:, :, None, :].astype(np.float64) - first[None, None].astype(np.float64)) ** 2).sum(-1),
                      axis=-1)
    np.testing.assert_array_equal(targets, brute)
    with pytest.raises(UserError, match="needs at least as many frames"):
        fit_kmeans(frames[:1, :2], 8)


def numpy_purity(targets, labels, clusters):
    """Cluster by cluster: the frames of its commonest word, summed, over all frames."""
    total = 0
    for c in range(clusters):
        words = [labels[i] for i, t in np.argwhere(targets == c)]
        total += max(np.bincount(words)) if words else 0
    return total / targets.size


def test_purity_and_pnmi_match_numpy():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(8)
    labels = rng.integers(0, 4, size=30)
    targets = np.where(rng.random((30, 7)) < 0.6, labels[:, None] * 2, rng.integers(0, 10, size=(30, 7)))
    np.testing.assert_allclose(cluster_purity(targets, labels, 10), numpy_purity(targets, labels, 10), rtol=1e-12)
    per_frame = np.repeat(labels, 7)
    want = mutual_info_score(per_frame, targets.ravel()) / mutual_info_score(per_frame, per_frame)
    np.testing.assert_allclose(pnmi(targets, labels, 10), want, rtol=1e-9)
    pure = np.repeat(labels[:, None], 5, axis=1)
    assert cluster_purity(pure, labels, 4) == 1.0 and abs(pnmi(pure, labels, 4) - 1.0) < 1e-12
    one = np.zeros((30, 5), int)  # one cluster: the commonest word's share, no information
    assert cluster_purity(one, labels, 3) == np.bincount(labels).max() / 30 and pnmi(one, labels, 3) == 0.0


# -- the model -----------------------------------------------------------------------------------


def _tiny(**kwargs):
    keras.utils.set_random_seed(0)
    options = dict(num_clusters=6, final_dim=8, mask_prob=0.3, mask_span=3, num_samples=4000)
    options.update(kwargs)
    return HuBERT(speech_transformer(8, 16, 2, 2, 0.0, 4, 4), **options)


def _targets(x, clusters=6):
    frames = batched_frames(mfcc_frames, x)
    return assign_clusters(frames, fit_kmeans(frames, clusters, seed=0, inits=1))


def test_the_step_loss_is_the_masked_cross_entropy_of_its_own_logits():
    x = speech_clips(6)
    y = _targets(x)
    for weight in (0.0, 0.5):
        model = _tiny(unmasked_weight=weight, feature_penalty=0.0)
        step = model.masked_pass(tf.constant(x), tf.constant(y), tf.constant([0, 0]))
        out = speech_features(model.encoder, tf.constant(x), masked=step["mask"])
        logits = model.head(out.layers[-1]).numpy().astype(np.float64)
        mask = step["mask"].numpy()
        nll = np.log(np.exp(logits).sum(-1)) - np.take_along_axis(logits, y[..., None], -1)[..., 0]
        want = nll[mask].mean() + weight * nll[~mask].mean()
        got = model.method_loss((tf.constant(x), tf.constant(y)), training=False)  # step 0: the same mask
        np.testing.assert_allclose(float(got), want, rtol=1e-5, err_msg=f"unmasked_weight {weight}")
        assert 0 < mask.mean() < 1


def test_fit_learns_refuses_bad_targets_round_trips_and_serves(tmp_path):
    x = speech_clips(48)
    y = _targets(x)
    model = _tiny(representation_layer=1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0).history
    assert history["masked_loss"][-1] < history["masked_loss"][0] - 0.1, history["masked_loss"]
    assert 0.3 < np.mean(history["masked_fraction"]) < 0.8  # p = 0.3, spans of 3 on 12 frames
    assert np.isfinite(history["loss"]).all() and 0 <= history["masked_accuracy"][-1] <= 1
    for bad, message in ((None, "fit on \\(waveforms, targets\\)"), (y.astype(np.float32), "int cluster ids"),
                         (y[:, :5], "targets have 5 frames per clip; the clips give 12"),
                         (y + 6, "cluster ids in 0..5 \\(num_clusters=6\\), got ids from 6 to 11")):
        with pytest.raises(Exception, match=message):
            model.fit(x, bad, batch_size=16, verbose=0)
    check_speech_model_serves_its_block(model, x[:3], 1)
    assert model.predicted_clusters(x[:2]).shape == (2, 12)
    task = model.task_metrics(x, y, batch_size=16)
    assert 0.0 <= task["masked_accuracy"] <= 1.0 and task["masked_frames"] > 0 and math.isfinite(task["masked_loss"])
    path = str(tmp_path / "hubert.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x[:3], verbose=0), model.predict(x[:3], verbose=0), atol=1e-5)
    assert restored.representation_layer == 1 and restored.num_clusters == 6


# -- the second iteration ------------------------------------------------------------------------


def test_iteration_2_takes_its_targets_from_the_parents_block(tmp_path):
    """A tiny first iteration, then the second one's prepare (the stage's, as a run makes it):
    its targets are the k-means (seed 0) of block `target_layer`'s frames of the parent, not
    the MFCCs' or another block's."""
    from keras_ssl.models.hubert_targets import split_targets
    from keras_ssl.run_setup import load_run_dataset, run_stage, training_split
    from keras_ssl.saving import load_model
    from tests.helpers import SMOKE_RUN, smoke_config, smoke_parent_run

    parent_dir = smoke_parent_run("hubert", tmp_path)
    with np.load(f"{parent_dir}/prepared.npz") as stored:
        first_targets = stored["targets"]
    config = smoke_config("hubert_iter2", tmp_path, **SMOKE_RUN, model_dir=str(tmp_path / "iter2"), target_layer=2)
    dataset = load_run_dataset(config)
    stage = run_stage(config, dataset, chief=True)
    with np.load(tmp_path / "iter2" / "prepared.npz") as stored:  # what the run trains on
        targets, centroids, purity = stored["targets"], stored["centroids"], float(stored["purity"])
    np.testing.assert_array_equal(targets, stage.artefacts["targets"])
    split, _ = training_split(config, dataset)
    parent = load_model(f"{parent_dir}/model.keras")
    features = parent.layer_frames(split.waveforms, 2).numpy()
    assert centroids.shape == (config.options.num_clusters, features.shape[-1]) != (8, 39)  # not the MFCCs' width
    np.testing.assert_allclose(centroids, fit_kmeans(features, config.options.num_clusters, seed=config.seed),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(targets, assign_clusters(features, centroids))
    assert not np.array_equal(targets, assign_clusters(parent.layer_frames(split.waveforms, 1).numpy(), centroids))
    assert not np.array_equal(targets, first_targets)
    assert purity == cluster_purity(targets, split.labels, config.options.num_clusters)
    # another split: the nearest centroid of the parent's block 2
    test_targets = split_targets(config.options, dataset.test, stage)
    np.testing.assert_array_equal(test_targets, assign_clusters(parent.layer_frames(dataset.test.waveforms, 2).numpy(),
                                                                centroids))
    bad = smoke_config("hubert_iter2", tmp_path, **SMOKE_RUN, model_dir=str(tmp_path / "bad"), target_layer=5)
    with pytest.raises(UserError, match="--target_layer=5, but the parent has 2 Transformer blocks"):
        run_stage(bad, dataset)


def test_the_frame_trackers_average_over_clips_across_batches_of_unequal_size():
    """`masked_fraction` and `feature_penalty` (`SpeechTransformerModel.track_frames`) over an
    evaluation of 6 clips in batches of 4 and 2: the share of all masked frames and the mean over
    the 6 clips of mean(f^2) of the feature encoder's output, not the mean of the two batches'."""
    x = speech_clips(6)
    y = _targets(x)
    model = _tiny(feature_penalty=10.0, mask_prob=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    got = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    seed = tf.constant([0, 0])  # the step's seed before any update: (seed, optimizer.iterations)
    masks = [model.global_span_mask(tf.constant(x[rows]), seed)[1].numpy() for rows in (slice(0, 4), slice(4, 6))]
    assert masks[0].mean() != masks[1].mean()  # else a per-batch mean would pass too
    np.testing.assert_allclose(got["masked_fraction"], np.concatenate(masks).mean(), rtol=1e-6)
    features = speech_features(model.encoder, tf.constant(x)).features.numpy().astype(np.float64)
    per_clip = (features ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(got["feature_penalty"], per_clip.mean(), rtol=1e-5)
    assert abs(per_clip[:4].mean() + per_clip[4:].mean() - 2 * per_clip.mean()) > 1e-3 * per_clip.mean()
