"""How much speaker (and word) information a trained audio model's features hold, probe by probe.

    python benchmarks/audio_probe_sweep.py --model_dir=runs/cpc_spoken_digits

`keras-ssl-evaluate` fits one probe per feature (logistic regression, C = 1,
on standardised features). This asks whether that choice decides the
comparison with the MFCC baseline. For the run's frame points (CPC:
`context`, c_t, and `latent`, z_t) and the MFCCs, pooled over each clip
by the mean, the mean and standard deviation, the maximum and the last
frame, it fits on the train split and scores on the test split:

* the evaluator's probe (`keras_ssl.evaluation.classification.linear_probe`)
  at each `--logistic_c` (L2 strength 1/C; the SimCLR paper, Appendix B.5,
  picks the regularisation per feature set: a sweep shows whether one C
  favours one feature set);
* an RBF-kernel SVM for each `--svm_c` (scikit-learn's `SVC`, gamma
  "scale"): a non-linear view, which can read information the pooled
  features hold that a linear probe cannot (its one kernel width is not
  tuned, so it may suit wide features badly).

Labels: `word` and `speaker` (the dataset's), and for the synthetic spoken
digits (`keras-ssl-make-spoken-digits`, files named
`<speaker>_s<speed>_p<pitch>.wav`) the rendering settings each speaker is
spoken with: `pitch`, `speed` (3 classes each) and `speaker_pitch` (the
voice as heard: speaker x pitch, 120 classes). A speaker probe must ignore
the pitch each voice is rendered at; these show which of the two a
feature holds.

Prints one table per label (rows: feature and pooling; columns: classifier),
test accuracy in %. No training: it reads `model.keras` and the run's
dataset (`config.json`), so it can run on any finished audio run.
"""

import keras_ssl  # noqa: F401  (before TensorFlow: turns on its oneDNN kernels)
from absl import app, flags

flags.DEFINE_string("model_dir", None, "a finished audio run (model.keras, config.json)")
flags.DEFINE_list("logistic_c", ["0.1", "1", "10"], "inverse L2 strengths of the logistic regressions")
flags.DEFINE_list("svm_c", ["10"], "C of the RBF-kernel SVMs (empty: none)")
flags.DEFINE_list("poolings", ["mean", "mean_std", "max", "last"], "poolings over each clip's frames")
flags.DEFINE_list("labels", ["speaker", "word"], "labels to probe: speaker, word, and for the synthetic "
                  "spoken digits pitch, speed, speaker_pitch")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def pooled_features(frames_fn, waveforms, poolings):
    """`{point_pooling: [N, D]}` for every frame point of `frames_fn(waveforms)`."""
    import tensorflow as tf

    from keras_ssl.evaluation.audio import clip_features, pooled_statistics

    pool = {"mean": lambda f: tf.reduce_mean(f, axis=1), "mean_std": pooled_statistics,
            "max": lambda f: tf.reduce_max(f, axis=1), "last": lambda f: f[:, -1]}

    def pooled(batch):
        return {f"{point}_{name}": pool[name](tf.cast(frames, tf.float32))
                for point, frames in frames_fn(batch).items() for name in poolings}

    return clip_features(pooled, waveforms)


def rendering_labels(split):
    """`{"pitch", "speed": int [N]}` from spoken-digits file names (`..._s<speed>_p<pitch>.wav`),
    or None when the split's files are not named so."""
    import numpy as np

    from keras_ssl.data.spoken_digits import clip_rendering

    found = [clip_rendering(path) for path in (() if split.paths is None else split.paths)]
    if not found or None in found:
        return None
    speed, pitch = np.asarray(found).T
    return {"speed": speed, "pitch": pitch}


def targets(dataset):
    """`{label: (train labels or None, test labels or None)}` for every label the sweep knows."""
    splits = (dataset.train, dataset.test)
    rendering = [rendering_labels(split) for split in splits]
    result = {"word": tuple(split.labels for split in splits), "speaker": tuple(split.speakers for split in splits)}
    for name in ("pitch", "speed"):
        result[name] = tuple(None if r is None else r[name] for r in rendering)
    result["speaker_pitch"] = tuple(
        None if r is None or split.speakers is None else split.speakers * 1000 + r["pitch"]
        for r, split in zip(rendering, splits))
    return result


def svm_accuracy(train_x, train_y, test_x, test_y, c):
    """Test accuracy of an RBF-kernel SVM on standardised features (scaler fit on train)."""
    import numpy as np
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    scaler = StandardScaler().fit(train_x)
    predictions = SVC(C=c).fit(scaler.transform(train_x), train_y).predict(scaler.transform(test_x))
    return float(np.mean(predictions == test_y))


def classifiers():
    """`(column name, accuracy(train_x, train_y, test_x, test_y))` for every classifier asked for."""
    from keras_ssl.evaluation.classification import linear_probe

    columns = [(f"logistic C={c}", lambda *data, c=float(c): linear_probe(*data, C=c)) for c in FLAGS.logistic_c]
    return columns + [(f"RBF-SVM C={c}", lambda *data, c=float(c): svm_accuracy(*data, c)) for c in FLAGS.svm_c]


def main(argv):
    del argv
    from keras_ssl.audio_encoders import mfcc
    from keras_ssl.bin.common import load_run
    from keras_ssl.errors import UserError
    from keras_ssl.saving import load_model
    from keras_ssl.training import load_run_dataset

    unknown = sorted(set(FLAGS.labels) - {"speaker", "word", "pitch", "speed", "speaker_pitch"})
    if unknown:
        raise SystemExit(f"error: unknown --labels {','.join(unknown)}; choose from speaker, word, pitch, speed, "
                         "speaker_pitch")
    try:
        config, _ = load_run(FLAGS.model_dir)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    if config.method_spec.modality != "audio":
        raise SystemExit(f"error: {FLAGS.model_dir} is a {config.method} run; this sweep needs an audio run "
                         f"(--method=cpc_audio)")
    model = load_model(f"{FLAGS.model_dir}/model.keras")
    dataset = load_run_dataset(config)
    sources = (model.probe_frames, lambda waveforms: {"mfcc": mfcc(waveforms)})
    train, test = {}, {}
    for frames_fn in sources:
        train.update(pooled_features(frames_fn, dataset.train.waveforms, FLAGS.poolings))
        test.update(pooled_features(frames_fn, dataset.test.waveforms, FLAGS.poolings))
    labels = targets(dataset)
    columns = classifiers()
    print(f"{FLAGS.model_dir}: {len(dataset.train)} train / {len(dataset.test)} test clips; test accuracy %")
    for label in FLAGS.labels:
        train_y, test_y = labels[label]
        if train_y is None or test_y is None:
            print(f"{label}: the dataset has no such label")
            continue
        print(f"\n| {label}: feature | dim | " + " | ".join(name for name, _ in columns) + " |")
        print("|---|---|" + "---|" * len(columns))
        for feature in train:
            data = (train[feature], train_y, test[feature], test_y)
            scores = [f"{100 * accuracy(*data):.1f}" for _, accuracy in columns]
            print(f"| {feature} | {train[feature].shape[1]} | " + " | ".join(scores) + " |", flush=True)


if __name__ == "__main__":
    app.run(main)
