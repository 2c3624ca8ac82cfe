"""CPC (issue 15): its InfoNCE against NumPy, across replicas, the model's step and fit()."""

import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.audio_encoders import cpc_conv, num_frames
from keras_ssl.models.cpc import CPC


def numpy_cpc_terms(predictions, latents, k, rows):
    """For every (b, t): log(exp(p . z_pos) + sum over the drawn rows j, except the positive's own
    row, of exp(p . z_j)) minus p . z_pos, with z_pos = z[b, t + k], written out loop by loop."""
    p, z = predictions.astype(np.float64), latents.astype(np.float64)
    batch, steps = p.shape[:2]
    flat = z.reshape(-1, z.shape[-1])
    out = np.zeros((batch, steps))
    for b in range(batch):
        for t in range(steps):
            own = b * z.shape[1] + t + k
            scores = [p[b, t] @ z[b, t + k]] + [p[b, t] @ flat[j] for j in rows if j != own]
            out[b, t] = np.log(np.sum(np.exp(scores))) - p[b, t] @ z[b, t + k]
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_cpc_info_nce_matches_numpy(k):
    rng = np.random.default_rng(k)
    latents = rng.normal(size=(3, 7, 4)).astype(np.float32)
    predictions = rng.normal(size=(3, 7 - k, 4)).astype(np.float32)
    terms, correct, n = losses.cpc_info_nce_terms(predictions, latents, k, num_negatives=30, seed=(1, k))
    rows = losses.cpc_negative_rows(21, 30, (1, k)).numpy()
    assert rows.min() >= 0 and rows.max() < 21 and len(set(rows.tolist())) > 10  # spread over the batch
    own = {b * 7 + t + k for b in range(3) for t in range(7 - k)}
    assert own & set(rows.tolist())  # some draws hit a positive: the masking is exercised
    np.testing.assert_allclose(terms.numpy(), numpy_cpc_terms(predictions, latents, k, rows), rtol=1e-5)
    assert int(n) == 31
    flat = latents.reshape(-1, 4)
    for b in range(3):
        for t in range(7 - k):
            pos = predictions[b, t] @ latents[b, t + k]
            negs = [predictions[b, t] @ flat[j] for j in rows if j != b * 7 + t + k]
            assert bool(correct[b, t]) == bool(pos > max(negs))


@pytest.mark.parametrize("num_latents", [1, 2, 7, 21])
def test_cpc_negative_rows_cover_every_latent_uniformly(num_latents):
    """Distribution and edges of the draw: every row 0 .. n-1 (the first and the last too), each
    at rate 1/n within 5 standard deviations, none outside; the same rows for the same seed."""
    seed = (1234, num_latents)
    draws = 1000 * num_latents
    rows = losses.cpc_negative_rows(num_latents, draws, seed).numpy()
    assert rows.shape == (draws,) and rows.dtype == np.int32
    counts = np.bincount(rows, minlength=num_latents)
    assert len(counts) == num_latents, (counts, f"seed {seed}")  # nothing >= n
    p = 1.0 / num_latents
    tolerance = 5 * np.sqrt(draws * p * (1 - p)) + 1e-9
    assert np.all(np.abs(counts - draws * p) <= tolerance), (counts, f"seed {seed}")
    np.testing.assert_array_equal(losses.cpc_negative_rows(num_latents, draws, seed).numpy(), rows)


@pytest.mark.parametrize("special", ["first", "last"])
def test_cpc_loss_draws_negatives_from_the_first_and_the_last_latent(special):
    """Independently of the drawn rows: one latent (the batch's first or last) is the only one that
    scores against every prediction (25, the others 0). With 200 draws from 12 latents it is drawn
    (probability 1 - (11/12)^200), so a prediction whose positive it is not has a loss near 25; the
    one whose positive it is, masked from its own negatives, a loss near 0."""
    batch, length, k = 2, 6, 1
    latents = np.zeros((batch, length, 4), np.float32)
    b, t = (0, 0) if special == "first" else (batch - 1, length - 1)
    latents[b, t, 0] = 5.0
    predictions = np.zeros((batch, length - k, 4), np.float32)
    predictions[..., 0] = 5.0
    terms, _, _ = losses.cpc_info_nce_terms(predictions, latents, k, num_negatives=200, seed=(7, 8),
                                            cross_replica=False)
    terms = terms.numpy()
    own = np.zeros_like(terms, bool)
    if t >= k:
        own[b, t - k] = True  # the prediction whose positive is the special latent
    assert np.all(terms[~own] > 20.0), (terms, "seed (7, 8)")
    assert np.all(terms[own] < 1e-3), (terms, "seed (7, 8)")


def test_cpc_info_nce_perfect_prediction_is_near_zero_and_bound_near_log_n():
    latents = np.eye(8, dtype=np.float32)[None].repeat(2, 0) * 20.0  # orthogonal latents, 2 sequences
    latents[1] *= -1
    predictions = latents[:, 2:]  # predicts z_{t+2} exactly
    terms, correct, n = losses.cpc_info_nce_terms(predictions, latents, 2, num_negatives=16)
    assert float(tf.reduce_max(terms)) < 1e-3 and bool(tf.reduce_all(correct))
    assert math.log(int(n)) - float(tf.reduce_mean(terms)) == pytest.approx(math.log(17), abs=1e-3)


@pytest.mark.parametrize("sizes", [(3, 3), (3, 2)])
def test_cpc_info_nce_across_replicas_equals_one_device(two_cpu_strategy, sizes):
    """Other sequences' latents come from every replica: loss and gradients as on one device."""
    rng = np.random.default_rng(sum(sizes))
    n, k = sum(sizes), 2
    x = rng.normal(size=(n, 6, 4)).astype(np.float32)
    w0 = rng.normal(size=(4, 4)).astype(np.float32) * 0.5

    def loss_of(x_part, w, n_global):
        z = tf.einsum("btd,de->bte", x_part, w)
        terms, _, _ = losses.cpc_info_nce_terms(tf.einsum("btd,de->bte", z[:, :-k], w), z, k, 12, (3, 4))
        return tf.reduce_sum(terms) / (n_global * (6 - k))

    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        single = loss_of(tf.constant(x), w, n)
    single_grad = tape.gradient(single, w)

    with two_cpu_strategy.scope():
        w_dist = tf.Variable(w0)
    parts = [x[:sizes[0]], x[sizes[0]:]]
    values = two_cpu_strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group]))

    @tf.function
    def step(values):
        def replica_fn(part):
            with tf.GradientTape() as tape:
                loss = loss_of(part, w_dist, n)
            return loss, tape.gradient(loss, w_dist)

        loss, grad = two_cpu_strategy.run(replica_fn, args=(values,))
        return two_cpu_strategy.reduce("SUM", loss, axis=None), two_cpu_strategy.reduce("SUM", grad, axis=None)

    dist_loss, dist_grad = step(values)
    np.testing.assert_allclose(float(dist_loss), float(single), rtol=1e-5)
    np.testing.assert_allclose(dist_grad.numpy(), single_grad.numpy(), rtol=1e-4, atol=1e-6)


def _chirps(n, samples=3200, seed=0):
    """n frequency sweeps (random start and rate) with noise: the future frames differ from
    the present ones and follow from them (a steady tone would make every frame alike)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    f0, rate = rng.uniform(300, 1500, size=(n, 1)), rng.uniform(-4000, 4000, size=(n, 1))
    phase = 2 * np.pi * (f0 * t + 0.5 * rate * t ** 2)
    return (0.5 * np.sin(phase) + 0.05 * rng.normal(size=(n, samples))).astype(np.float32)


def test_cpc_encoder_makes_one_frame_per_10_ms():
    encoder = cpc_conv(16)
    assert encoder(np.zeros((2, 16000), np.float32)).shape == (2, 100, 16)
    assert encoder(np.zeros((1, 16001), np.float32)).shape[1] == num_frames(16001) == 101


def test_audio_encoders_by_name_differ_only_in_the_frame_normalisation():
    from keras_ssl.audio_encoders import build_audio_encoder
    from keras_ssl.errors import UserError

    def norms(encoder):
        return [layer.name for layer in encoder.layers if isinstance(layer, keras.layers.LayerNormalization)]

    normed, plain = build_audio_encoder("cpc_conv", 1 / 32), build_audio_encoder("cpc_conv_plain", 1 / 32)
    assert norms(normed) == ["standardize"] + [f"norm{i}" for i in range(1, 6)]
    assert norms(plain) == ["standardize"]  # the clip is still standardised; no per-frame norm
    assert plain(np.zeros((2, 3200), np.float32)).shape == (2, 20, 16)
    assert [w.shape for w in plain.weights] == [w.shape for w in normed.weights if "norm" not in w.path]
    with pytest.raises(UserError, match="cpc_conv or cpc_conv_plain"):
        build_audio_encoder("wav2vec", 1.0)


def test_cpc_fit_learns_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    x = _chirps(64)
    model = CPC(cpc_conv(32), context_dim=32, prediction_steps=4, num_samples=3200)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, batch_size=16, epochs=12, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] - 0.8, history["loss"]
    assert history["mi_bound"][-1] > history["mi_bound"][0]
    assert history["accuracy"][-1] > 0.04  # chance: 1 in 129
    assert model.predict(x[:3], verbose=0).shape == (3, 32)  # pooled context
    assert model.frames(x[:3]).shape == (3, 20, 32)
    per_step = model.step_metrics(x, batch_size=16)
    assert len(per_step["accuracy"]) == 4 and per_step["accuracy"][0] >= per_step["accuracy"][-1] - 0.05
    path = str(tmp_path / "cpc.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x[:3], verbose=0), model.predict(x[:3], verbose=0), atol=1e-5)
    assert restored.prediction_steps == 4 and restored.num_samples == 3200


def test_cpc_refuses_clips_too_short_for_its_steps():
    from keras_ssl.errors import UserError

    model = CPC(cpc_conv(8), context_dim=8, prediction_steps=12)
    model.compile(optimizer="adam")
    with pytest.raises(UserError, match="give 10 frames, not more than prediction_steps=12"):
        model.fit(np.zeros((4, 1600), np.float32), batch_size=4, verbose=0)


def test_wrong_inputs_are_one_clear_error_and_leave_the_model_working():
    """Images, [N, T, 1], integer PCM and targets y are refused in one line each, and a refused
    predict() does not break the next, right one (a relaxed retrace once lost the input's rank)."""
    from keras_ssl.errors import UserError

    x = _chirps(8)
    model = CPC(cpc_conv(8), context_dim=8, prediction_steps=4, num_samples=3200)
    model.compile(optimizer="adam")
    for bad, message in ((x[:4, :, None], r"waveform batches \[batch, samples\].*got shape \(4, 3200, 1\)"),
                         (np.zeros((2, 8, 8, 1), np.uint8), r"got shape \(2, 8, 8, 1\)"),
                         ((x[:4] * 32767).astype(np.int16), "got int16; scale int16 PCM by 1/32768")):
        with pytest.raises(UserError, match=message) as error:
            model.predict(bad, verbose=0)
        assert "\n" not in str(error.value)
        assert model.predict(x[:2], verbose=0).shape == (2, 8)
    # a pipeline of unknown rank is checked when the step runs, as float [batch, samples]
    unknown = tf.data.Dataset.from_generator(lambda: iter([x[:2], x[2:4]]),
                                             output_signature=tf.TensorSpec(None, tf.float32))
    assert model.predict(unknown, verbose=0).shape == (4, 8)
    with pytest.raises(UserError, match="no use for targets y"):
        model.fit(x, np.zeros(8, np.int32), batch_size=4, verbose=0)
    with pytest.raises(UserError, match="got int16"):
        model.fit((x * 32767).astype(np.int16), batch_size=4, verbose=0)
    model.fit(x, batch_size=4, verbose=0)


def test_served_embedding_is_the_l2_normalised_mean_context():
    """Both audio signatures serve `embedding` = the mean over frames of c_t, L2-normalised, computed
    here in NumPy from `frames` (not from another signature, which would share a bug), and `context` = c_t."""
    keras.utils.set_random_seed(0)
    model = CPC(cpc_conv(8), context_dim=8, prediction_steps=2, num_samples=3200)
    x = _chirps(3) * np.array([[1.0], [0.1], [3.0]], np.float32)  # different loudness: different norms
    frames = model.frames(x).numpy().astype(np.float64)
    pooled = frames.mean(axis=1)
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    endpoints = model.serving_endpoints((3200,))
    assert [e.name for e in endpoints] == ["serving_default", "embed_waveforms"]
    for endpoint in endpoints:
        out = endpoint.function(tf.constant(x))
        np.testing.assert_allclose(out["embedding"].numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=endpoint.name)
        np.testing.assert_allclose(np.linalg.norm(out["embedding"].numpy(), axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(out["context"].numpy(), frames, rtol=1e-5, atol=1e-6, err_msg=endpoint.name)


def test_served_audio_is_guarded_and_matches_the_model(tmp_path):
    """The SavedModel's audio inputs: WAV bytes and waveforms agree with the model; stereo is
    mixed down, short clips padded; wrong rate, empty, too long, not-WAV and NaN refused."""
    import io

    from scipy.io import wavfile

    from keras_ssl.export import export_saved_model
    from keras_ssl.serving import _SignatureCalls

    keras.utils.set_random_seed(0)
    model = CPC(cpc_conv(8), context_dim=8, prediction_steps=2, num_samples=3200)
    path = export_saved_model(model, str(tmp_path), "cpc", warmup=False, input_shape=(3200,))
    served = tf.saved_model.load(path)

    def wav(samples, rate=16000):
        buf = io.BytesIO()
        wavfile.write(buf, rate, np.round(np.asarray(samples) * 32768).clip(-32768, 32767).astype(np.int16))
        return buf.getvalue()

    x = np.round(_chirps(3) * 32768) / 32768  # on the int16 grid, as a WAV carries it
    short = x[0, :2000]
    out = served.signatures["serving_default"](audio=tf.constant([wav(x[0]), wav(short), wav(np.stack([x[1], x[1]], 1))]))
    direct = model.frames(np.stack([x[0], np.pad(short, (0, 1200)), x[1]]).astype(np.float32)).numpy()
    np.testing.assert_allclose(out["context"].numpy(), direct, atol=1e-5)
    assert out["embedding"].shape == (3, 8) and out["context"].shape == (3, 20, 8)
    pooled = direct.astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(out["embedding"].numpy(), pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    by_floats = served.signatures["embed_waveforms"](waveforms=tf.constant(x[:1].astype(np.float32)))
    np.testing.assert_allclose(by_floats["embedding"].numpy(), out["embedding"].numpy()[:1], atol=1e-5)
    bad = {
        "resample the WAV to 16000 Hz": dict(audio=tf.constant([wav(x[0], rate=8000)])),
        "empty audio": dict(audio=tf.constant([wav(np.zeros(0))])),
        "longer than 60 s": dict(audio=tf.constant([wav(np.zeros(16000 * 61))])),
        "not WAV files": dict(audio=tf.constant([wav(x[0]), b"RIFF....AVI LIST"])),
    }

    for message, args in bad.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            served.signatures["serving_default"](**args)
    extensible = bytearray(wav(x[0]))
    extensible[20:22] = b"\xfe\xff"  # WAVE_FORMAT_EXTENSIBLE's tag (multi-channel tools write it)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"WAVE_FORMAT_EXTENSIBLE .*indices.*\[0\]"):
        served.signatures["serving_default"](audio=tf.constant([bytes(extensible)]))
    for samples in (np.zeros(100, np.uint8), np.zeros(100, np.int32), np.zeros(100, np.float32)):
        buf = io.BytesIO()
        wavfile.write(buf, 16000, samples)  # 8-bit, 32-bit, float: what training reads, serving refuses by name
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"not 16-bit PCM .*indices.*\[1\]; .*-b 16 "):
            served.signatures["serving_default"](audio=tf.constant([wav(x[0]), buf.getvalue()]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        served.signatures["embed_waveforms"](waveforms=tf.constant([[0.1, np.nan, 0.2]], tf.float32))
    empty = served.signatures["serving_default"](audio=tf.constant([], tf.string))
    assert empty["embedding"].shape == (0, 8) and empty["context"].shape == (0, 20, 8)
    assert {"embed_audio", "embed_waveforms"} <= set(dir(_SignatureCalls))


def test_image_cpc_context_is_causal_top_to_bottom():
    """c at row i depends on the latents of rows <= i only (the masked context of section 3.2)."""
    from keras_ssl.models.cpc import causal_grid_context

    context = causal_grid_context(4, 6, layers=3)
    z = np.random.default_rng(0).normal(size=(1, 5, 5, 4)).astype(np.float32)
    changed = z.copy()
    changed[:, 3:] += 1.0  # rows 3 and 4 change
    a, b = context(z).numpy(), context(changed).numpy()
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert np.abs(a[:, 3:] - b[:, 3:]).max() > 0


def test_image_cpc_fits_on_a_patch_grid_and_round_trips(tmp_path):
    from keras_ssl.data import load_source
    from keras_ssl.encoders import small_cnn
    from keras_ssl.models.cpc import ImageCPC, grid_size, patch_grid

    images = load_source("digits", image_size=(16, 16)).train.images[:96]
    grid = patch_grid(tf.cast(images[:2], tf.float32), 8, 4)
    assert grid.shape == (2, 3, 3, 8, 8, 1) and grid_size(28, 8, 4) == 6
    np.testing.assert_array_equal(grid[1, 2, 1].numpy(), images[1, 8:16, 4:12].astype(np.float32))
    keras.utils.set_random_seed(0)
    model = ImageCPC(small_cnn((None, None, 1), width_multiplier=0.25), patch_size=8, stride=4, context_dim=16,
                     prediction_steps=1, num_negatives=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(images, batch_size=16, epochs=4, verbose=0).history
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    assert model.predict(images[:3], verbose=0).shape == (3, 32)  # whole images through the encoder
    path = str(tmp_path / "cpc_image.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(restored.predict(images[:3], verbose=0), model.predict(images[:3], verbose=0),
                               atol=1e-5)
    from keras_ssl.errors import UserError

    model = ImageCPC(small_cnn((None, None, 1), width_multiplier=0.25), patch_size=8, stride=4, prediction_steps=3)
    model.compile(optimizer="adam")
    with pytest.raises(UserError, match="give 3 rows of 8 px patches every 4 px, not more than prediction_steps=3"):
        model.fit(images[:8], batch_size=8, verbose=0)


def test_clips_too_short_are_refused_before_the_run_directory_is_claimed(tmp_path):
    from keras_ssl.errors import UserError
    from keras_ssl.training import TrainConfig, train
    from tests.helpers import write_chirp_folder

    dataset = write_chirp_folder(str(tmp_path / "chirps"))
    config = TrainConfig.from_dict({"method": "cpc_audio", "dataset": dataset, "audio_seconds": 0.1, "batch_size": 8,
                                    "model_dir": str(tmp_path / "run"), "width_multiplier": 0.03})
    with pytest.raises(UserError, match="clips of 1600 samples give 10 frames, not more than prediction_steps=12"):
        train(config)
    assert not os.path.exists(tmp_path / "run" / "config.json")


def test_audio_evaluation_pools_every_frame_point_and_the_mfccs_the_same_ways(tmp_path):
    """Every frame point (and the MFCC baseline) is probed mean-pooled and mean+std-pooled; the
    pooled vectors are the NumPy mean and standard deviation over frames; the MFCC speaker probe
    separates the chirps' two "speakers" (start frequencies 300-600 Hz vs 1200-1500 Hz)."""
    from tests.helpers import write_chirp_folder

    from keras_ssl.audio_encoders import mfcc
    from keras_ssl.data import load_source
    from keras_ssl.evaluation.audio import clip_features, evaluate_audio_model, pooled_statistics

    dataset = load_source(write_chirp_folder(str(tmp_path / "chirps")), audio_seconds=0.25)
    keras.utils.set_random_seed(0)
    model = CPC(cpc_conv(16), context_dim=8, prediction_steps=4, num_samples=4000)
    untrained = CPC(cpc_conv(16), context_dim=8, prediction_steps=4, num_samples=4000)
    frames = model.frames(dataset.test.waveforms[:5]).numpy().astype(np.float64)
    np.testing.assert_allclose(
        clip_features(lambda x: pooled_statistics(model.frames(x)), dataset.test.waveforms[:5]),
        np.concatenate([frames.mean(axis=1), frames.std(axis=1)], axis=1), rtol=1e-4, atol=1e-5)
    results = evaluate_audio_model(model, dataset, untrained, str(tmp_path / "eval"), plot=None, probe_max_iter=200)
    expected = {"context": 8, "latent": 16, "mfcc": mfcc(dataset.test.waveforms[:1]).shape[-1]}
    for name, width in expected.items():
        for prefix in ("", "untrained_") if name != "mfcc" else ("",):
            assert results["probes"][prefix + name]["feature_dim"] == width
            assert results["probes"][prefix + name + "_mean_std"]["feature_dim"] == 2 * width
            assert {"word", "speaker"} <= set(results["probes"][prefix + name + "_mean_std"])
    assert results["representation_point"] == "context" and results["feature_dim"] == 8
    assert results["linear_probe_accuracy"] == results["probes"]["context"]["word"]
    assert results["probes"]["mfcc_mean_std"]["speaker"] >= 0.9
    assert os.path.isfile(tmp_path / "eval" / "evaluation.json")
