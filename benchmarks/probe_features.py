"""Which features of a convolutional encoder to probe: the same trained encoder read
several ways, beside the same reading of the untrained encoder and raw pixels.

    python benchmarks/probe_features.py --model_dir=runs/simclr_fashion_mnist_demo

For the encoder of a run (its `encoder.keras`) and the same architecture untrained
(seed 0), one JSON line per reading with the linear probe and weighted kNN (k = 20)
of `keras_ssl.evaluation.evaluate_features`, as `keras-ssl-evaluate` computes them:

  gap        the global average of the last block (the encoder's `features`), or of --layer;
  grid2      that map averaged over a 2x2 grid of regions, concatenated;
  grid3      the same over 3x3 regions (RotNet's spatially pooled probe, Gidaris et al. 2018);
  blocks     the global averages of every block, concatenated.

Raw pixels are read as they are (784 values / 255) and averaged over 2x2 pixel cells.

`--knn_normalizations=centred,standardised` adds the kNN of every reading after subtracting the
training features' mean (and dividing by their standard deviation), the same rule for every
row (`knn_accuracy_centred`, `knn_accuracy_standardised`).
"""

import json
import time

import keras_ssl  # noqa: F401  (before TensorFlow: turns on its oneDNN kernels)
from absl import app, flags

flags.DEFINE_string("model_dir", None, "a run directory with encoder.keras", required=True)
flags.DEFINE_string("dataset", "fashion_mnist", "dataset name")
flags.DEFINE_integer("image_size", None, "resize the images first (56 for the relative-position run)")
flags.DEFINE_list("readings", ["gap", "grid2", "grid3", "blocks"], "which readings")
flags.DEFINE_list("encoders", ["trained", "untrained", "pixels"], "which encoders")
flags.DEFINE_integer("train_limit", None, "probe on the first N training images only")
flags.DEFINE_string("layer", None, "the map read by gap/gridN (default: the last block, what the encoder pools)")
flags.DEFINE_multi_enum("knn_normalizations", [], ["centred", "standardised"],
                        "also the kNN of the features centred (and standardised) by the training statistics")
flags.DEFINE_string("output", None, "append JSON lines here")
FLAGS = flags.FLAGS


def readings_model(encoder, cells, layer=None):
    """A model of the encoder's images to `{reading: [B, D]}` (gap and gridN of `layer`, default
    the last block)."""
    import keras
    import tensorflow as tf

    from keras_ssl.evaluation.classification import region_means

    blocks = sorted((layer.name for layer in encoder.layers if layer.name.startswith("block")))
    maps = [encoder.get_layer(name).output for name in blocks]
    model = keras.Model(encoder.input, maps)

    def read(x):
        outs = [tf.cast(m, tf.float32) for m in model(x, training=False)]
        last = outs[blocks.index(layer) if layer else -1]
        result = {"gap": tf.reduce_mean(last, [1, 2]),
                  "blocks": tf.concat([tf.reduce_mean(m, [1, 2]) for m in outs], -1)}
        for n in cells:
            result[f"grid{n}"] = region_means(last, n)
        return result

    return tf.function(read, reduce_retracing=True)


def features(read, split):
    import numpy as np

    from keras_ssl.data.views import eval_batches

    chunks = [{k: v.numpy() for k, v in read(batch[0]).items()} for batch in eval_batches(split, 512)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def main(argv):
    del argv
    import os

    import keras
    import numpy as np

    from keras_ssl.data import load_source
    from keras_ssl.encoders import build_encoder
    from keras_ssl.evaluation import evaluate_features, knn_accuracy

    ds = load_source(FLAGS.dataset, image_size=(FLAGS.image_size,) * 2 if FLAGS.image_size else None)
    train = ds.train.take(FLAGS.train_limit)
    encoder = keras.models.load_model(os.path.join(FLAGS.model_dir, "encoder.keras"), compile=False)

    def report(name, reading, tr, te, seconds):
        start = time.time()
        scores = evaluate_features(tr, train.labels, te, ds.test.labels, ds.num_classes, knn_k=(20,))
        row = dict(encoder=name, reading=reading, feature_dim=int(tr.shape[1]),
                   linear_probe_accuracy=round(scores["linear_probe_accuracy"], 4),
                   knn_accuracy=round(scores["knn_accuracy"], 4))
        mean, std = tr.mean(0), tr.std(0) + 1e-6
        for normalization in FLAGS.knn_normalizations:
            scale = std if normalization == "standardised" else 1.0
            row[f"knn_accuracy_{normalization}"] = round(knn_accuracy(
                (tr - mean) / scale, train.labels, (te - mean) / scale, ds.test.labels, 20, ds.num_classes), 4)
        row["seconds"] = round(seconds + time.time() - start, 1)
        print(json.dumps(row), flush=True)
        if FLAGS.output:
            with open(FLAGS.output, "a") as f:
                f.write(json.dumps(row) + "\n")

    cells = [int(r[4:]) for r in FLAGS.readings if r.startswith("grid")]
    for name in FLAGS.encoders:
        start = time.time()
        if name == "pixels" and FLAGS.layer:
            continue
        if name == "pixels":
            flat = lambda s: s.images.astype(np.float32) / 255.0
            tr, te = flat(train), flat(ds.test)
            report(name, "raw", tr.reshape(len(tr), -1), te.reshape(len(te), -1), time.time() - start)
            side = tr.shape[1] // 2
            cell = lambda x: x.reshape(len(x), side, 2, side, 2).mean((2, 4))
            report(name, "2x2 cells", cell(tr).reshape(len(tr), -1), cell(te).reshape(len(te), -1), 0.0)
            continue
        if name == "untrained":
            keras.utils.set_random_seed(0)
            net = build_encoder("small_cnn" if encoder.name.startswith("small_cnn") else encoder.name,
                                tuple(encoder.input_shape[1:]))
        else:
            net = encoder
        read = readings_model(net, cells, FLAGS.layer)
        tr, te = features(read, train), features(read, ds.test)
        seconds = time.time() - start
        for reading in FLAGS.readings:
            report(name, reading, tr[reading], te[reading], seconds)
            seconds = 0.0


if __name__ == "__main__":
    app.run(main)
