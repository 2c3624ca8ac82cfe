"""Reference points for the SimCLR evaluation, on the same test set and protocol.

    python benchmarks/baselines.py --encoder=small_cnn --supervised_epochs=15

Prints one JSON line per baseline with linear-probe and kNN (k=20, k=200)
accuracy, using `keras_ssl.evaluation.evaluate_features` exactly as
`keras-ssl-evaluate` does:
  raw_pixels   the 784 pixel values / 255 as features;
  untrained    the encoder with its random initialisation (BN in inference);
               with the grid_* figures of its last map pooled over 2x2 regions, as
               `keras-ssl-evaluate` reports them for a trained encoder (and the
               readings of `--layers`, as its `--layers` adds them);
  supervised   the encoder trained with labels (softmax head, Adam 1e-3,
               random horizontal flips, batch 256), then frozen: the usual
               upper reference for a linear probe.
With `--verification`, each also as a verifier: ROC AUC and EER of the cosine similarity
over the balanced test pairs a Siamese run is scored on (`keras-ssl-evaluate`: 10,000 pairs,
seed 1234), the reference points for the Siamese table's AUC.
"""

import json
import time

import keras_ssl  # noqa: F401  (before TensorFlow: turns on its oneDNN kernels)
from absl import app, flags

flags.DEFINE_string("dataset", "fashion_mnist", "dataset name")
flags.DEFINE_string("encoder", "small_cnn", "encoder name")
flags.DEFINE_integer("supervised_epochs", 8, "epochs of supervised training (0: skip)")
flags.DEFINE_list("only", [], "subset of raw_pixels,untrained,supervised")
flags.DEFINE_integer("image_size", None, "resize images first (e.g. 56, as the relative-position run)")
flags.DEFINE_list("layers", [], "extra readings of the encoders, as keras-ssl-evaluate's --layers (e.g. block2:grid3)")
flags.DEFINE_bool("verification", False, "also score each baseline's features as a verifier: ROC AUC and EER "
                  "of the cosine similarity over the Siamese evaluation's 10,000 balanced test pairs (seed 1234)")
flags.DEFINE_integer("seed", 0, "seed")
flags.DEFINE_string("output", None, "append JSON lines here")
FLAGS = flags.FLAGS


def _report(name, scores, **extra):
    row = dict(baseline=name, **{k: round(v, 4) for k, v in scores.items()}, image_size=FLAGS.image_size, **extra)
    print(json.dumps(row), flush=True)
    if FLAGS.output:
        with open(FLAGS.output, "a") as f:
            f.write(json.dumps(row) + "\n")


def _verification_scores(test_features, test_labels):
    """ROC AUC and EER of "same class?" scored by the cosine similarity of the features, over
    the balanced test pairs `keras-ssl-evaluate` scores a Siamese run on (10,000, seed 1234): the
    verification figures of a baseline, beside a metric model's."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from keras_ssl.data.pairs import pair_indices
    from keras_ssl.evaluation.verification import equal_error_rate

    i, j, same = (t.numpy() for t in pair_indices(test_labels, 10000, seed=1234))
    x = test_features.reshape(len(test_features), -1).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = np.sum(x[i] * x[j], axis=1)
    return {"verification_roc_auc": float(roc_auc_score(same, similarity)),
            "verification_eer": equal_error_rate(same, similarity)[0]}


def _encoder_scores(encoder, ds):
    """`keras-ssl-evaluate`'s figures of a frozen encoder: the served features' linear probe and
    kNN (k = 20, 200), those of the last map pooled over 2 x 2 regions (`grid_*`), and those of
    each `--layers` reading (`<reading>/<metric>`)."""
    from keras_ssl.evaluation import evaluate_encoder

    results = evaluate_encoder(encoder, ds, plot=None, write_report=False, layers=FLAGS.layers)
    scores = {k: v for k, v in results.items() if isinstance(v, float)}
    for reading, figures in results.get("per_layer", {}).items():
        scores.update({f"{reading}/{k}": v for k, v in figures.items() if isinstance(v, float)})
    if FLAGS.verification:
        from keras_ssl.evaluation import extract_features

        scores.update(_verification_scores(extract_features(encoder, ds.test), ds.test.labels))
    return scores


def main(argv):
    del argv
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_ssl.data import load_source
    from keras_ssl.encoders import build_encoder
    from keras_ssl.evaluation import evaluate_features

    keras.utils.set_random_seed(FLAGS.seed)
    ds = load_source(FLAGS.dataset, image_size=(FLAGS.image_size,) * 2 if FLAGS.image_size else None)
    ytr, yte = ds.train.labels, ds.test.labels
    wanted = set(FLAGS.only or ["raw_pixels", "untrained", "supervised"])

    if "raw_pixels" in wanted:
        start = time.time()
        flat = lambda s: s.images.reshape(len(s), -1).astype(np.float32) / 255.0
        scores = evaluate_features(flat(ds.train), ytr, flat(ds.test), yte, ds.num_classes)
        if FLAGS.verification:
            scores.update(_verification_scores(flat(ds.test), yte))
        _report("raw_pixels", scores, seconds=round(time.time() - start, 1))

    if "untrained" in wanted:
        start = time.time()
        encoder = build_encoder(FLAGS.encoder, ds.image_shape)
        _report("untrained", _encoder_scores(encoder, ds), encoder=FLAGS.encoder, seconds=round(time.time() - start, 1))

    if "supervised" in wanted and FLAGS.supervised_epochs > 0:
        start = time.time()
        encoder = build_encoder(FLAGS.encoder, ds.image_shape)
        inputs = keras.Input(ds.image_shape)
        logits = keras.layers.Dense(ds.num_classes)(encoder(inputs))
        classifier = keras.Model(inputs, logits)
        classifier.compile(keras.optimizers.Adam(1e-3),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

        def flip(x, y):
            x = tf.cast(x, tf.float32) / 255.0
            mask = tf.random.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
            return tf.where(mask, tf.reverse(x, axis=[2]), x), y

        train = (tf.data.Dataset.from_tensor_slices((ds.train.images, ytr)).shuffle(len(ytr), seed=FLAGS.seed)
                 .batch(256).map(flip, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
        classifier.fit(train, epochs=FLAGS.supervised_epochs, verbose=2)
        train_seconds = time.time() - start
        head_acc = classifier.evaluate(ds.test.images.astype(np.float32) / 255.0, yte, verbose=0,
                                       return_dict=True)["accuracy"]
        _report("supervised", _encoder_scores(encoder, ds), encoder=FLAGS.encoder, epochs=FLAGS.supervised_epochs,
                softmax_head_accuracy=round(float(head_acc), 4), train_seconds=round(train_seconds, 1))


if __name__ == "__main__":
    app.run(main)
