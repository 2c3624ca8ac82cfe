"""Frozen-feature evaluation of audio models: word and speaker probes against baselines.

Every frame sequence the model declares (`probe_frames(waveforms)`, one
forward pass for all of them: for CPC the context `c_t` and the latents
`z_t`), the MFCCs of the clips (13
coefficients per 10 ms, `keras_ssl.audio_encoders.mfcc`) and the same
architecture untrained (freshly initialised, seed 0) are pooled over time in
two ways, the same for every row:

* `mean`: the mean over frames (`<point>`; for CPC's context this is the
  served representation);
* `mean+std`: the mean and the standard deviation over frames, concatenated
  (`<point>_mean_std`; the "statistics pooling" of speaker embeddings, e.g.
  x-vectors, Snyder et al. 2018, and the usual MFCC utterance vector).

Each utterance vector is fit by the linear probe (scikit-learn's logistic
regression on standardised features, `classification.linear_probe`) for the
word label and, when the dataset has speakers, the speaker label. A learnt
representation earns its keep when it beats the MFCCs and the untrained
network pooled the same way.
"""

import os

import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.evaluation.classification import embedding_plot, knn_accuracy, linear_probe
from keras_ssl.evaluation.report import write_json_atomic


def pooled_statistics(frames):
    """`[B, T, D]` -> `[B, 2D]`: the mean over time, then the standard deviation."""
    mean, variance = tf.nn.moments(tf.cast(frames, tf.float32), axes=[1])
    return tf.concat([mean, tf.sqrt(variance)], axis=-1)


def _pooled_frames(frames_fn):
    """`frames_fn(waveforms) -> {point: [B, T, D]}` -> a function giving `{point: [B, 2D]}`."""
    return lambda waveforms: {point: pooled_statistics(f) for point, f in frames_fn(waveforms).items()}


def clip_features(function, waveforms, batch_size=128):
    """`function(waveforms)` over numpy clips `[N, samples]`, in batches: float32 `[N, D]`
    for a function giving `[B, D]`, or `{name: [N, D]}` for one giving `{name: [B, D]}`."""
    fn = tf.function(lambda x: tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), function(x)))
    chunks = []
    for i in range(0, len(waveforms), batch_size):
        chunk = waveforms[i:i + batch_size]
        padded = np.pad(chunk, [(0, batch_size - len(chunk)), (0, 0)])  # one shape: one trace
        chunks.append(tf.nest.map_structure(lambda t: t.numpy()[:len(chunk)], fn(tf.constant(padded))))
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *chunks)


def _probes(train_x, test_x, train, test, probe_max_iter):
    scores = {"word": linear_probe(train_x, train.labels, test_x, test.labels, probe_max_iter)}
    if train.speakers is not None and test.speakers is not None:
        scores["speaker"] = linear_probe(train_x, train.speakers, test_x, test.speakers, probe_max_iter)
    return scores


def evaluate_audio_model(model, dataset, untrained=None, output_dir=None, plot="tsne", probe_max_iter=1000,
                         train_limit=None, extra=None, write_report=True):
    """Word/speaker probes of `model`'s frame points, MFCCs and `untrained`,
    each mean-pooled and mean+std-pooled; kNN on the representation; a t-SNE
    of the test clips; `evaluation.json`.

    Top-level keys (as for images): `linear_probe_accuracy` (word, on the
    representation: the first frame point, mean-pooled),
    `speaker_probe_accuracy`, `knn_accuracy` (k = 20, also as `knn_accuracy_k20`),
    `feature_dim`; every figure
    under `probes[point][label]` with `point` as `context`, `context_mean_std`,
    `mfcc`, `mfcc_mean_std`, `untrained_context`, ...
    """
    if not dataset.labelled:
        raise UserError(f"dataset {dataset.name} has no labels; the word probe needs one sub-folder per word")
    if len(dataset.test) == 0:
        raise UserError(f"dataset {dataset.name} has no test split to evaluate on")
    from keras_ssl.audio_encoders import mfcc

    train, test = dataset.train.take(train_limit), dataset.test
    results = {"dataset": dataset.name, "train_clips": len(train), "test_clips": len(test), "probes": {}}
    sources = [("", model.probe_frames), ("", lambda waveforms: {"mfcc": mfcc(waveforms)})]
    if untrained is not None:
        sources.append(("untrained_", untrained.probe_frames))
    representation = None
    for prefix, frames_fn in sources:  # one forward pass per model and split for all its points
        train_stats, test_stats = (clip_features(_pooled_frames(frames_fn), split.waveforms) for split in (train, test))
        for name in train_stats:
            width = train_stats[name].shape[1] // 2
            for suffix, columns in (("", slice(0, width)), ("_mean_std", slice(None))):  # the mean: first half
                train_x, test_x = train_stats[name][:, columns], test_stats[name][:, columns]
                point = prefix + name + suffix
                results["probes"][point] = dict(_probes(train_x, test_x, train, test, probe_max_iter),
                                                feature_dim=int(train_x.shape[1]))
                if representation is None:  # the model's first frame point, mean-pooled, is the representation
                    representation = (point, train_x, test_x)
    name, train_x, test_x = representation
    first = results["probes"][name]
    knn = knn_accuracy(train_x, train.labels, test_x, test.labels, 20, dataset.num_classes)
    results.update(representation_point=name, linear_probe_accuracy=first["word"], feature_dim=first["feature_dim"],
                   knn_accuracy=knn, knn_accuracy_k20=knn)  # knn_accuracy: the key every run's report has
    if "speaker" in first:
        results["speaker_probe_accuracy"] = first["speaker"]
    if extra:
        results.update(extra)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        if plot:
            results["embedding_plot"] = embedding_plot(
                test_x, test.labels, os.path.join(output_dir, "embedding.png"), dataset.class_names, method=plot,
                title=f"{plot.upper()} of {len(test_x)} test clips ({name}), coloured by word")
        if write_report:
            write_json_atomic(os.path.join(output_dir, "evaluation.json"), results)
    return results


def prediction_plot(per_step, path):
    """The InfoNCE accuracy and MI bound per prediction step k, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(per_step["accuracy"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=110)
    a.plot(steps, 100 * np.asarray(per_step["accuracy"]), marker="o")
    a.set(xlabel="k (latent steps ahead, 10 ms each)", ylabel="accuracy (%)", title="positive ranked first")
    b.plot(steps, per_step["mi_bound"], marker="o", color="tab:green")
    b.set(xlabel="k", ylabel="nats", title="InfoNCE bound log N - L")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_audio_table(results):
    """Rows `point/label  accuracy` for every probe, then the InfoNCE figures."""
    rows = [("probe", "accuracy")]
    for point, scores in results.get("probes", {}).items():
        rows += [(f"{point}/{label}", f"{100 * v:.2f}%") for label, v in scores.items() if label != "feature_dim"]
    if "knn_accuracy_k20" in results:
        rows.append((f"{results['representation_point']}/word kNN k=20", f"{100 * results['knn_accuracy_k20']:.2f}%"))
    per_step = results.get("info_nce")
    if per_step:
        for k, accuracy in enumerate(per_step["accuracy"]):
            rows.append((f"info_nce accuracy k={k + 1}", f"{100 * accuracy:.2f}%"))
        for k, bound in enumerate(per_step["mi_bound"]):
            rows.append((f"info_nce MI bound k={k + 1} (nats)", f"{bound:.3f}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>8}" for a, b in rows]
    lines.insert(1, "-" * (width + 10))
    return "\n".join(lines)
