"""The audio VQ-VAE (keras_ssl.models.vqvae_audio, issue 32 item 5): the log-mel front end
and the step's loss against NumPy, Griffin-Lim, EMA and restarts on two replicas, fit()
and the binaries on a tiny WAV folder with the SavedModel served without keras."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssl import griffin_lim
from keras_ssl.audio_encoders import LogMelSpectrogram
from keras_ssl.errors import UserError
from keras_ssl.models.vqvae_audio import VQVAEAudio
from tests.helpers import BLOCK_KERAS, chirp, write_chirp_folder

SEED = 5
K, D = 16, 2
SAMPLES = 400 + 160 * 7  # 8 log-mel frames -> 4 codes


def numpy_mel_matrix(bands=80, bins=257, rate=16000, low=20.0, high=8000.0):
    """HTK-mel triangular filters (mel = 1127 ln(1 + f / 700)), band edges evenly spaced in
    mel, the DC bin left out: what tf.signal.linear_to_mel_weight_matrix documents."""
    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)

    frequencies = mel(np.linspace(0.0, rate / 2, bins)[1:])[:, None]
    edges = np.linspace(mel(low), mel(high), bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0.0, np.minimum((frequencies - lower) / (centre - lower),
                                         (upper - frequencies) / (upper - centre)))
    return np.concatenate([np.zeros((1, bands)), weights])


def numpy_log_mel(x):
    """25 ms periodic-Hann frames every 10 ms, |rfft_512|, mel, log(max(., 1e-3)), (. + 2) / 2.5."""
    x = np.asarray(x, np.float64)
    frames = 1 + (x.shape[-1] - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    chunks = np.stack([x[:, i * 160:i * 160 + 400] * window for i in range(frames)], axis=1)
    magnitude = np.abs(np.fft.rfft(chunks, n=512))
    return (np.log(np.maximum(magnitude @ numpy_mel_matrix(), 1e-3)) + 2.0) / 2.5


def clips(n, samples=SAMPLES, seed=SEED):
    rng = np.random.default_rng(seed)
    return np.stack([chirp(rng.uniform(300, 1500), rng.uniform(-3000, 3000), samples, rng) for _ in range(n)])


def tiny_model(**options):
    """log-mel -> Conv1D(3, kernel 2, stride 2, linear) -> 4 frames of 3 -> kernel-1 conv to D
    -> K codes; decoder: repeat each vector twice, a kernel-1 conv to the 80 bands."""
    keras.utils.set_random_seed(SEED)
    waveform = keras.Input((None,))
    frames = keras.layers.Conv1D(3, 2, strides=2, name="frames")(LogMelSpectrogram()(waveform))
    encoder = keras.Model(waveform, frames, name="tiny_encoder")
    quantized = keras.Input((4, D))
    decoder = keras.Model(quantized, keras.layers.Conv1D(80, 1, dtype="float32", name="log_mel")(
        keras.layers.UpSampling1D(2)(quantized)), name="decoder")
    return VQVAEAudio(encoder, decoder=decoder, num_samples=SAMPLES, codebook_size=K, code_dim=D, seed=SEED,
                      griffin_lim_iterations=4, **options)


def numpy_forward(model, x):
    """An independent float64 forward pass: `(z [N, D], codes [N], squared error per clip)`."""
    (w1, b1), (wp, bp) = model.encoder.get_weights(), model.pre_quantizer.get_weights()
    wd, bd = model.decoder.get_weights()
    codebook = model.codebook.numpy().astype(np.float64)
    target = numpy_log_mel(x)  # [n, 8, 80]
    n = len(x)
    pairs = target.reshape(n, 4, 2 * 80)  # kernel 2, stride 2: frames (2t, 2t + 1)
    z = (pairs @ w1.reshape(2 * 80, 3) + b1) @ wp.reshape(3, D) + bp
    flat = z.reshape(-1, D)
    codes = np.argmin(((flat[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
    e = codebook[codes].reshape(n, 4, D)
    decoded = np.repeat(e, 2, axis=1) @ wd.reshape(D, 80) + bd
    return flat, codes, ((decoded - target) ** 2).mean(axis=(1, 2))


def _fit_one_step(model, x, learning_rate=0.1, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        model.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return {k: v[0] for k, v in model.fit(tf.data.Dataset.from_tensors(x), epochs=1, verbose=0).history.items()}


def test_the_log_mel_front_end_matches_numpy():
    x = clips(3)
    np.testing.assert_allclose(griffin_lim.mel_matrix().numpy(), numpy_mel_matrix(), atol=5e-5)
    np.testing.assert_allclose(griffin_lim.log_mel(x).numpy(), numpy_log_mel(x), atol=2e-4)
    assert griffin_lim.num_mel_frames(16000) == 98 and griffin_lim.log_mel(np.zeros((1, 16000))).shape == (1, 98, 80)


def test_a_whole_step_matches_numpy():
    """The step's loss (log-mel squared error + codebook + beta commitment), its metrics and
    the codebook after one SGD step, from NumPy."""
    model, x = tiny_model(), clips(4)
    z, codes, error = numpy_forward(model, x)
    codebook = model.codebook.numpy().astype(np.float64)
    e = codebook[codes]
    codebook_loss = np.mean((e - z) ** 2)
    logs = _fit_one_step(model, x)
    np.testing.assert_allclose(logs["reconstruction"], error.mean(), rtol=2e-4)
    np.testing.assert_allclose(logs["codebook_loss"], codebook_loss, rtol=2e-4)
    np.testing.assert_allclose(logs["commitment_loss"], 0.25 * codebook_loss, rtol=2e-4)
    np.testing.assert_allclose(logs["loss"], error.mean() + 1.25 * codebook_loss, rtol=2e-4)
    counts = np.bincount(codes, minlength=K)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(logs["perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-5)
    np.testing.assert_allclose(logs["codes_used"], np.mean(counts > 0), rtol=1e-6)
    gradient = np.zeros_like(codebook)  # the codebook moves by the codebook loss alone
    np.add.at(gradient, codes, 2.0 * (e - z) / z.size)
    np.testing.assert_allclose(model.codebook.numpy(), codebook - 0.1 * gradient, rtol=1e-4, atol=1e-5)


def test_ema_and_restarts_on_two_replicas_equal_one_device(two_cpu_strategy):
    """The codebook shared with the image VQ-VAE, through the audio model: two replicas
    write the one device's codebook, moving averages and loss."""
    x = clips(4, seed=SEED + 1)
    options = dict(codebook_ema=True, codebook_ema_decay=0.8, dead_code_steps=1)
    one = tiny_model(**options)
    start = one.get_weights()
    logs_one = _fit_one_step(one, x)
    with two_cpu_strategy.scope():
        two = tiny_model(**options)
        two.set_weights(start)
    logs_two = _fit_one_step(two, x, strategy=two_cpu_strategy)
    for a, b, v in zip(one.get_weights(), two.get_weights(), one.weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=v.path)
    assert not np.allclose(one.codebook.numpy(), start[[v.path for v in one.weights].index(one.codebook.path)])
    for name in ("loss", "reconstruction", "perplexity", "codes_used"):
        np.testing.assert_allclose(logs_two[name], logs_one[name], rtol=1e-4, err_msg=name)


def test_griffin_lim_converges_and_a_chirp_round_trips():
    """The spectral convergence of a chirp's magnitude falls with the iterations; through the
    log-mel and back (pseudo-inverse, 32 iterations) the chirp's log-mel stays close."""
    x = chirp(400.0, 3000.0, 8000, np.random.default_rng(0), noise=0.0)[None]
    magnitude = tf.abs(griffin_lim.stft(x))
    convergence = [float(griffin_lim.spectral_convergence(magnitude, griffin_lim.griffin_lim(magnitude, n))[0])
                   for n in (0, 1, 4, 32)]
    assert convergence == sorted(convergence, reverse=True) and convergence[-1] < 0.1, convergence
    assert np.all(griffin_lim.linear_from_mel(griffin_lim.mel_magnitudes(x)).numpy() >= 0)
    target = griffin_lim.log_mel(x)
    back = griffin_lim.waveform_from_log_mel(target, 8000, 32)
    assert back.shape == (1, 8000)
    error = float(tf.sqrt(tf.reduce_mean(tf.square(griffin_lim.log_mel(back) - target))))
    assert error < 0.2, error  # in normalised units: the log-mel's own spread is about 1


def test_fit_learns_round_trips_and_decodes():
    from keras_ssl.audio_encoders import log_mel_conv

    x = clips(32, samples=4000)
    keras.utils.set_random_seed(0)
    model = VQVAEAudio(log_mel_conv(16), num_samples=4000, codebook_size=16, code_dim=8, decoder_hidden_dim=16,
                       griffin_lim_iterations=4)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x, batch_size=8, epochs=4, verbose=0).history
    assert history["reconstruction"][-1] < history["reconstruction"][0], history
    codes = model.encode_codes(x[:3])
    assert codes.shape == (3, 12) and codes.dtype == tf.int32  # 23 log-mel frames -> 12 codes
    assert model.predict(x[:3], verbose=0).shape == (3, 8)
    np.testing.assert_array_equal(model.decode_log_mel(codes), model.reconstruct_log_mel(x[:3]))
    assert model.reconstruct(x[:3]).shape == (3, 4000)
    with pytest.raises(UserError, match=rf"codes must be in \[0, {16}\), got values from 0 to 16"):
        model.decode_log_mel(np.array([[0] * 11 + [16]]))
    with pytest.raises(UserError, match=r"codes must be \[batch, 12\], got shape \(1, 5\)"):
        model.decode_log_mel(np.zeros((1, 5), np.int32))
    restored = keras.models.load_model(_saved(model))
    np.testing.assert_allclose(restored.predict(x[:3], verbose=0), model.predict(x[:3], verbose=0), atol=1e-6)


def _saved(model):
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "vqvae_audio.keras")
    model.save(path)
    return path


def test_code_histograms_are_each_clips_share_of_every_code():
    from keras_ssl.evaluation.audio_codes import code_histograms

    codes = np.array([[0, 0, 3, 1], [2, 2, 2, 2]])
    np.testing.assert_allclose(code_histograms(codes, 5), [[0.5, 0.25, 0, 0.25, 0], [0, 0, 1, 0, 0]])


SERVE = BLOCK_KERAS + textwrap.dedent('''
    import io, wave
    import numpy as np, tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    clips = np.load(sys.argv[2])
    wavs = []
    for x in clips:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as f:
            f.setnchannels(1); f.setsampwidth(2); f.setframerate(16000)
            f.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
        wavs.append(buf.getvalue())
    audio = tf.constant(wavs)
    codes = m.signatures["encode"](audio=audio)["codes"]
    decoded = m.signatures["decode"](codes=tf.cast(codes, tf.int64))
    again = m.signatures["reconstruct"](audio=audio)
    embedding = m.signatures["serving_default"](audio=audio)["embedding"]
    try:
        m.signatures["decode"](codes=tf.fill([1, codes.shape[1]], tf.constant(int(sys.argv[3]), tf.int64)))
        refused = None
    except Exception as e:
        refused = str(e)
    print(json.dumps({"codes": codes.numpy().tolist(), "waveform": decoded["waveform"].numpy().tolist(),
                      "log_mel": decoded["log_mel"].numpy().tolist(),
                      "reconstructed": again["waveform"].numpy().tolist(), "embedding": embedding.numpy().tolist(),
                      "refused": refused, "keras_loaded": "keras" in sys.modules or "keras_ssl" in sys.modules}))
''')


def test_binaries_train_evaluate_and_export_a_wav_folder_served_without_keras(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp_path)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    dataset, model_dir, codebook_size = write_chirp_folder(str(tmp_path / "chirps")), str(tmp_path / "run"), 16
    run("keras_ssl.bin.train", "--method=vqvae_audio", f"--dataset={dataset}", "--audio_seconds=0.25", "--epochs=1",
        "--steps_per_epoch=3", "--batch_size=8", "--width_multiplier=0.03125", f"--codebook_size={codebook_size}",
        "--code_dim=8", "--decoder_hidden_dim=16", "--griffin_lim_iterations=4", "--dtype_policy=float32",
        "--verbose=0", f"--model_dir={model_dir}")
    run("keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=none", "--probe_max_iter=100")
    report = json.load(open(os.path.join(model_dir, "evaluation.json")))
    for key in ("codebook_perplexity", "codes_used", "recon_log_mel_mse", "listener_accuracy_original",
                "listener_accuracy_reconstructed", "listener_accuracy_drop", "code_histogram_word_probe"):
        assert key in report, key
    assert {"quantized", "quantized_mean_std", "latent", "mfcc_mean_std"} <= set(report["probes"])
    assert len(report["reconstruction_wavs"]) == 8 and all(os.path.getsize(p) > 1000
                                                           for p in report["reconstruction_wavs"])
    proc = run("keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={tmp_path / 'exports'}")
    path = proc.stdout.strip().splitlines()[-1].split("exported: ")[-1]
    from keras_ssl.data import load_source

    waveforms = load_source(dataset, audio_seconds=0.25).test.waveforms[:3]
    np.save(tmp_path / "clips.npy", waveforms)
    proc = subprocess.run([sys.executable, "-c", SERVE, path, str(tmp_path / "clips.npy"), str(codebook_size)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not served["keras_loaded"]
    assert np.asarray(served["codes"]).shape == (3, 12)  # 0.25 s: 23 log-mel frames, a code per 2
    assert np.asarray(served["waveform"]).shape == (3, 4000) and np.asarray(served["log_mel"]).shape == (3, 23, 80)
    np.testing.assert_allclose(served["waveform"], served["reconstructed"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served["embedding"], axis=1), 1.0, rtol=1e-5)
    assert served["refused"] and f"token ids must be in [0, {codebook_size})" in served["refused"]
