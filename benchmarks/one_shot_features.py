"""One-shot accuracy on classes a run never trained on, read from several features.

    python benchmarks/one_shot_features.py --model_dir=runs/siamese_fashion_mnist_heldout \
        --model_dir=runs/simclr_fashion_mnist_demo --classes=7,8,9

For every run given: its served embedding (metric models: `model.embed`), its encoder's
features (`encoder.keras`, before any head) and its last map pooled over 2x2 regions (the
`grid_*` reading of `keras-ssl-evaluate`); beside them raw pixels and the run's encoder
architecture untrained (seed 0, at the run's width). Each is scored by N-way one-shot over the test images of
`--classes` (`keras_ssl.evaluation.verification.one_shot_accuracy`: 2,000 trials, seed 1234,
as `keras-ssl-evaluate` draws them), by Euclidean distance of L2-normalised features (the
cosine), and by distance of the features as they are. One JSON line per feature.
"""

import json
import os

import keras_ssl  # noqa: F401  (before TensorFlow: turns on its oneDNN kernels)
from absl import app, flags

flags.DEFINE_multi_string("model_dir", [], "run directories (encoder.keras; model.keras for the embedding)")
flags.DEFINE_string("dataset", "fashion_mnist", "dataset name")
flags.DEFINE_list("classes", ["7", "8", "9"], "the classes of the trials (those a held-out run never saw)")
flags.DEFINE_integer("trials", 2000, "one-shot trials")
flags.DEFINE_string("output", None, "append JSON lines here")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import keras
    import numpy as np

    from keras_ssl.data import load_source
    from keras_ssl.encoders import build_encoder
    from keras_ssl.evaluation import extract_features
    from keras_ssl.evaluation.classification import SPATIAL_GRID, embed_split, spatial_layer
    from keras_ssl.evaluation.verification import one_shot_accuracy
    from keras_ssl.saving import load_model
    from keras_ssl.training import read_config

    test = load_source(FLAGS.dataset).test
    classes = [int(c) for c in FLAGS.classes]
    keep = np.isin(test.labels, classes)
    labels = test.labels[keep]

    def report(source, reading, features):
        features = features[keep].reshape(int(keep.sum()), -1).astype(np.float64)
        unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        row = dict(source=source, reading=reading, feature_dim=int(features.shape[1]), n_way=len(classes),
                   one_shot_cosine=round(one_shot_accuracy(unit, labels, len(classes), FLAGS.trials, classes,
                                                           seed=1234), 4),
                   one_shot_euclidean=round(one_shot_accuracy(features, labels, len(classes), FLAGS.trials,
                                                              classes, seed=1234), 4))
        print(json.dumps(row), flush=True)
        if FLAGS.output:
            with open(FLAGS.output, "a") as f:
                f.write(json.dumps(row) + "\n")

    report("pixels", "raw", test.images.astype(np.float32) / 255.0)
    untrained_done = set()
    for model_dir in FLAGS.model_dir:
        encoder = keras.models.load_model(os.path.join(model_dir, "encoder.keras"), compile=False)
        report(model_dir, "encoder features", extract_features(encoder, test))
        reading = f"{spatial_layer(encoder)}:grid{SPATIAL_GRID}"
        report(model_dir, f"encoder {reading}", extract_features(encoder, test, layer=reading))
        model = load_model(os.path.join(model_dir, "model.keras"))
        if hasattr(model, "embed"):
            report(model_dir, "served embedding", embed_split(model, test))
        architecture = "small_cnn" if encoder.name.startswith("small_cnn") else encoder.name
        width = read_config(model_dir).width_multiplier
        if (architecture, width) not in untrained_done:  # the same network untrained, at the run's width
            untrained_done.add((architecture, width))
            keras.utils.set_random_seed(0)
            untrained = build_encoder(architecture, tuple(encoder.input_shape[1:]), width)
            architecture = f"{architecture} x{width:g}" if width != 1 else architecture
            report(f"{architecture} untrained", "encoder features", extract_features(untrained, test))
            report(f"{architecture} untrained", f"encoder {reading}", extract_features(untrained, test, layer=reading))


if __name__ == "__main__":
    app.run(main)
