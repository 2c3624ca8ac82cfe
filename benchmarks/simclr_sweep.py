"""Short SimCLR runs on Fashion-MNIST that differ in one setting; kNN/probe of each.

    python benchmarks/simclr_sweep.py --epochs=1 \
        --variant="base:" --variant="t02:temperature=0.2" --variant="adam:optimizer=adam,learning_rate=1e-3,lr_scaling=none"

Each --variant is NAME:key=value,... over the flat `keras_ssl.training.TrainConfig`
(run settings and SimCLR's options)
(applied on top of the demo settings below). Prints one line per variant with
kNN (k=20) accuracy on the full test set and, with --probe, the linear probe, of the
encoder's features and of its last map pooled over 2x2 regions (`grid_*`, as
`keras-ssl-evaluate` reports them).
Used to choose the demo settings and the `fashion_mnist` augmentation preset
(docs/BENCHMARKS.md).
"""

import json
import os
import shutil
import tempfile
import time

from absl import app, flags

flags.DEFINE_multi_string("variant", ["base:"], "NAME:key=value,...")
flags.DEFINE_integer("epochs", 1, "epochs per variant")
flags.DEFINE_boolean("probe", False, "also fit the linear probe (slower)")
flags.DEFINE_string("base", "flags/simclr_fashion_mnist_demo.cfg", "flagfile whose values are the base config")
flags.DEFINE_string("output", None, "append JSON lines with the results here")
FLAGS = flags.FLAGS


def _parse_flagfile(path):
    values = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("--") and "=" in line:
            key, value = line[2:].split("=", 1)
            values[key] = value
    return values


def _coerce(value):
    """A flagfile or --variant value as bool, int, float or str."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main(argv):
    del argv
    from keras_ssl.data import load_source
    from keras_ssl.evaluation import evaluate_features, extract_features, knn_accuracy, linear_probe
    from keras_ssl.evaluation.classification import SPATIAL_GRID, spatial_layer
    from keras_ssl.training import TrainConfig, train

    import keras

    dataset = load_source("fashion_mnist")
    base = {key: _coerce(value) for key, value in _parse_flagfile(FLAGS.base).items() if key != "model_dir"}
    base.update(epochs=FLAGS.epochs, verbose=0)
    for spec in FLAGS.variant:
        name, _, overrides = spec.partition(":")
        values = dict(base)
        for item in filter(None, overrides.split(",")):
            key, value = item.split("=", 1)
            values[key] = _coerce(value)
        values["model_dir"] = tempfile.mkdtemp(prefix=f"sweep_{name}_")
        config = TrainConfig.from_dict(values)
        start = time.time()
        result = train(config)
        encoder = keras.models.load_model(os.path.join(config.model_dir, "encoder.keras"))
        tr = extract_features(encoder, dataset.train)
        te = extract_features(encoder, dataset.test)
        row = {"variant": name, "overrides": overrides, "epochs": config.epochs,
               "train_seconds": round(result["train_seconds"], 1),
               "knn_accuracy": knn_accuracy(tr, dataset.train.labels, te, dataset.test.labels, 20, 10)}
        reading = f"{spatial_layer(encoder)}:grid{SPATIAL_GRID}"  # keras-ssl-evaluate's grid_* reading
        grid_tr, grid_te = (extract_features(encoder, split, layer=reading) for split in (dataset.train, dataset.test))
        row["grid_knn_accuracy"] = knn_accuracy(grid_tr, dataset.train.labels, grid_te, dataset.test.labels, 20, 10)
        if FLAGS.probe:
            row.update(evaluate_features(tr, dataset.train.labels, te, dataset.test.labels, 10, (20,)))
            row["grid_linear_probe_accuracy"] = linear_probe(grid_tr, dataset.train.labels, grid_te,
                                                             dataset.test.labels)
        row["wall_seconds"] = round(time.time() - start, 1)
        print(json.dumps(row), flush=True)
        if FLAGS.output:
            with open(FLAGS.output, "a") as f:
                f.write(json.dumps(row) + "\n")
        shutil.rmtree(config.model_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
