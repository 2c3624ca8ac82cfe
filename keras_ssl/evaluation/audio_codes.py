"""The audio VQ-VAE's own evaluations (`keras_ssl.models.vqvae_audio` declares them):
its codes on the test clips, and whether its reconstructions stay intelligible.

`audio_codebook` (no labels needed):

    codebook_perplexity   exp(-sum_k p_k log p_k), p the code usage over every code frame of
                          the test clips (K when all codes are used equally)
    codes_used            the fraction of the K codes used at least once
    recon_log_mel_mse     the decoder's squared error on the normalised log-mel given the
                          codes (the training loss's reconstruction term)
    codebook_usage_plot   a histogram of code usage (PNG), None without a run directory

`intelligibility` (word labels):

    listener_accuracy_original       a fixed listener, scikit-learn's logistic regression on
                                     MFCC statistics (the mean and standard deviation over
                                     frames of 13 MFCCs, `keras_ssl.evaluation.audio`)
                                     fitted on the ORIGINAL training clips, scored on the
                                     original test clips ...
    listener_accuracy_reconstructed  ... and on the same clips through their codes and back
                                     (the decoded log-mel, Griffin-Lim)
    listener_accuracy_drop           original - reconstructed (the goal: at most 0.05)
    reconstructed_word_probe         the same probe (logistic regression on MFCC statistics)
                                     fitted on the RECONSTRUCTED training clips and scored on
                                     the reconstructed test clips: how much of the word the
                                     codec keeps, for a listener used to its sound (compare
                                     with listener_accuracy_original, the probe on originals)
    reconstructed_word_probe_drop    listener_accuracy_original - reconstructed_word_probe
    code_histogram_word_probe        the word probe on the codes as a bag: each clip's
                                     normalised histogram of its K codes (order thrown away);
                                     the probe evaluation adds the quantised vectors pooled
                                     by their mean and mean+std (`quantized`, `quantized_mean_std`)
    reconstruction_plot              the log-mel of a few test clips above their reconstructions
    reconstruction_wavs              WAV files of those clips and their reconstructions
                                     (`audio_examples/` in the run directory)
"""

import os

import numpy as np

from keras_ssl.evaluation.method_evaluations import Evaluation

EXAMPLE_CLIPS = 4  # test clips written as WAV files and plotted, with their reconstructions


def _batches(waveforms, batch_size):
    """`(start, padded batch)` of `waveforms` in batches of one shape (one trace)."""
    for start in range(0, len(waveforms), batch_size):
        chunk = waveforms[start:start + batch_size]
        yield start, np.pad(chunk, [(0, batch_size - len(chunk)), (0, 0)]).astype(np.float32)


def code_statistics(model, waveforms, batch_size=64, reconstruct=True):
    """`(codes [N, code_frames], log-mel squared error per clip [N], reconstructed waveforms
    [N, samples])` of `model` (a `VQVAEAudio`) on numpy clips; with `reconstruct=False` the
    codes alone (no decoding, no Griffin-Lim)."""
    import tensorflow as tf

    @tf.function
    def run(x):
        codes = model.encode_codes(x)
        if not reconstruct:
            return (codes,)
        log_mel = model.decode_log_mel(codes)
        error = tf.reduce_mean(tf.square(log_mel - model.target_log_mel(x)), axis=[1, 2])
        return codes, error, model.to_waveforms(log_mel)

    parts = []
    for start, batch in _batches(waveforms, batch_size):
        n = min(batch_size, len(waveforms) - start)
        parts.append([t.numpy()[:n] for t in run(tf.constant(batch))])
    if not parts:
        empty = (np.zeros((0, model.code_frames), np.int32), np.zeros(0), np.zeros((0, model.num_samples), np.float32))
        return empty if reconstruct else empty[:1]
    return tuple(np.concatenate(p) for p in zip(*parts))


_LAST = []  # [(model, test split, statistics)]: the last run's, shared by its two evaluations


def _cached_statistics(context):
    """`code_statistics` of the test clips, computed once for both evaluations of a run
    (kept with the model and split they are of, so never mistaken for another's)."""
    model, test = context.model, context.dataset.test
    if not (_LAST and _LAST[0][0] is model and _LAST[0][1] is test):
        _LAST[:] = [(model, test, code_statistics(model, test.waveforms))]
    return _LAST[0][2]


def evaluate_audio_codebook(context):
    """The `audio_codebook` report of the module docstring on the test clips."""
    from keras_ssl.evaluation.codebook import usage_figures, usage_plot

    model = context.model
    codes, errors, _ = _cached_statistics(context)
    counts = np.bincount(codes.ravel(), minlength=model.codebook_size)
    results = dict(usage_figures(counts), recon_log_mel_mse=float(np.mean(errors)) if len(errors) else float("nan"),
                   codebook_usage_plot=None)
    if context.model_dir:
        os.makedirs(context.model_dir, exist_ok=True)
        results["codebook_usage_plot"] = usage_plot(counts, os.path.join(context.model_dir, "codebook_usage.png"),
                                                    unit="code frames", split="test clips")
    return results


def code_histograms(codes, codebook_size):
    """Each clip's codes `[N, T']` as a normalised histogram `[N, K]` (a bag of codes)."""
    codes = np.asarray(codes)
    rows = np.repeat(np.arange(len(codes)), codes.shape[1])
    counts = np.zeros((len(codes), codebook_size), np.float32)
    np.add.at(counts, (rows, codes.ravel()), 1.0)
    return counts / max(codes.shape[1], 1)


def listener_features(waveforms):
    """The fixed listener's features: the mean and standard deviation over frames of 13
    MFCCs, float32 `[N, 26]`."""
    from keras_ssl.audio_encoders import mfcc
    from keras_ssl.evaluation.audio import clip_features, pooled_statistics

    return clip_features(lambda x: pooled_statistics(mfcc(x)), waveforms)


def write_wav(path, waveform, rate=16000):
    """A float waveform in [-1, 1] as a 16-bit PCM WAV file (the stdlib `wave` module)."""
    import wave

    samples = np.round(np.clip(np.asarray(waveform, np.float64), -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.tobytes())
    return path


def spectrogram_plot(originals, reconstructions, titles, path):
    """The normalised log-mel of clips (top row) above their reconstructions', as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_ssl.griffin_lim import log_mel

    rows = [np.asarray(log_mel(np.asarray(w, np.float32))) for w in (originals, reconstructions)]
    fig, axes = plt.subplots(2, len(titles), figsize=(3 * len(titles), 5), dpi=100, squeeze=False)
    for r, (row, label) in enumerate(zip(rows, ("original", "reconstructed"))):
        for c, title in enumerate(titles):
            axes[r][c].imshow(row[c].T, origin="lower", aspect="auto", vmin=-2, vmax=3, cmap="magma")
            axes[r][c].set(title=f"{title}: {label}", xlabel="10 ms frames", ylabel="mel band")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_intelligibility(context):
    """The `intelligibility` report of the module docstring."""
    from keras_ssl.evaluation.classification import fitted_linear_probe, linear_probe

    model, dataset, request = context.model, context.dataset, context.request
    train, test = dataset.train.take(request.train_limit), dataset.test
    test_codes, _, reconstructed = _cached_statistics(context)
    listener = fitted_linear_probe(listener_features(train.waveforms), train.labels, request.probe_max_iter)
    original = float(np.mean(listener(listener_features(test.waveforms)) == test.labels))
    heard = float(np.mean(listener(listener_features(reconstructed)) == test.labels))
    train_codes, _, train_reconstructed = code_statistics(model, train.waveforms)
    adapted = float(np.mean(fitted_linear_probe(listener_features(train_reconstructed), train.labels,
                                                request.probe_max_iter)(listener_features(reconstructed))
                            == test.labels))
    histogram = linear_probe(code_histograms(train_codes, model.codebook_size), train.labels,
                             code_histograms(test_codes, model.codebook_size), test.labels, request.probe_max_iter)
    results = {"listener_accuracy_original": original, "listener_accuracy_reconstructed": heard,
               "listener_accuracy_drop": original - heard, "reconstructed_word_probe": adapted,
               "reconstructed_word_probe_drop": original - adapted, "code_histogram_word_probe": histogram,
               "reconstruction_plot": None, "reconstruction_wavs": []}
    if context.model_dir:
        folder = os.path.join(context.model_dir, "audio_examples")
        os.makedirs(folder, exist_ok=True)
        shown = list(range(min(EXAMPLE_CLIPS, len(test))))
        names = [f"{i:02d}_{dataset.class_names[test.labels[i]]}" for i in shown]
        for i, name in zip(shown, names):
            results["reconstruction_wavs"] += [write_wav(os.path.join(folder, f"{name}_original.wav"),
                                                         test.waveforms[i]),
                                               write_wav(os.path.join(folder, f"{name}_reconstructed.wav"),
                                                         reconstructed[i])]
        if shown:
            results["reconstruction_plot"] = spectrogram_plot(test.waveforms[shown], reconstructed[shown], names,
                                                              os.path.join(context.model_dir, "reconstructions.png"))
    return results


EVALUATIONS = (
    Evaluation("audio_codebook", "an audio VQ-VAE's code usage on the test clips and its log-mel error",
               evaluate_audio_codebook, ("codebook_perplexity", "codes_used", "codebook_size", "recon_log_mel_mse"),
               ("codebook_usage_plot",), needs_labels=False),
    Evaluation("intelligibility", "a fixed MFCC listener on original vs reconstructed test clips; word probe on "
               "the bag of codes; WAV examples", evaluate_intelligibility,
               ("listener_accuracy_original", "listener_accuracy_reconstructed", "listener_accuracy_drop",
                "reconstructed_word_probe", "reconstructed_word_probe_drop", "code_histogram_word_probe"),
               ("reconstruction_plot",)),
)
