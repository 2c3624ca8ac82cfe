"""keras-ssl-export: write a trained encoder as a SavedModel for TF Serving.

    keras-ssl-export --model_dir=runs/simclr_fashion_mnist --export_root=saved_models

Prints the path of the new version, e.g. saved_models/simclr_fashion_mnist/1.
"""

import json
import os
import sys

from absl import flags

from keras_ssl.bin.common import check_writable, load_run, run_main

flags.DEFINE_string("model_dir", None, "run directory written by keras-ssl-train", required=True)
flags.DEFINE_string("export_root", "saved_models", "root of the exported models")
flags.DEFINE_string("name", None, "model name (default: the run directory's name)")
flags.DEFINE_integer("version", None, "version number (default: the next free one)")
flags.DEFINE_boolean("overwrite", False, "replace an existing version")
flags.DEFINE_float("threshold", None, "siamese/triplet: decision threshold of the verify signature "
                   "(default: the one calibrated by keras-ssl-evaluate; else Siamese: the model's, "
                   "triplet: no verify signature)")
flags.DEFINE_string("reading", None, "image runs: serve this reading of the encoder as the embedding instead of "
                    "the representation, e.g. block2:grid3 (its map averaged over 3x3 regions) or block2 (its mean)")
FLAGS = flags.FLAGS


def _check_not_collapsed(model, config, input_shape):
    """Refuses a diverged or collapsed model, on up to 256 test examples of the run's
    dataset (when it can be loaded here; else non-finite weights only, as the exporter
    itself checks them)."""
    from keras_ssl.errors import UserError
    from keras_ssl.health import check_representation
    from keras_ssl.run_setup import run_modality

    modality = run_modality(config)
    try:
        dataset = modality.load_run_dataset(config, input_shape=input_shape)
    except UserError as e:
        print(f"warning: not checked for collapse ({config.dataset} cannot be loaded here: {e})", file=sys.stderr)
        return  # export_saved_model still refuses NaN/Inf weights
    inputs = modality.examples(dataset.test.take(256))
    check_representation(model.predict(inputs, verbose=0), f"the model in {FLAGS.model_dir}")


def main(argv):
    del argv
    from keras_ssl.errors import UserError
    from keras_ssl.export import export_saved_model

    config, _ = load_run(FLAGS.model_dir)
    check_writable(FLAGS.export_root, "--export_root")
    from keras_ssl.saving import load_model

    model = load_model(os.path.join(FLAGS.model_dir, "model.keras"))  # its declared endpoints are served
    from keras_ssl.run_setup import run_modality

    input_shape = run_modality(config).serving_input_shape(config, FLAGS.model_dir)
    _check_not_collapsed(model, config, input_shape)
    threshold, source = FLAGS.threshold, "--threshold"
    if model.supports_threshold:
        report = os.path.join(FLAGS.model_dir, "evaluation.json")
        if threshold is None and os.path.isfile(report):
            threshold, source = json.load(open(report)).get("threshold"), "evaluation.json (calibrated)"
        if threshold is None and model.threshold is not None:
            threshold, source = model.threshold, "model default (run keras-ssl-evaluate to calibrate)"
    elif threshold is not None:
        raise UserError(f"--threshold only applies to runs with a verify signature (siamese, triplet), "
                        f"not {config.method}")
    training = os.path.join(FLAGS.model_dir, "training.json")  # class names recorded by training
    class_names = json.load(open(training)).get("class_names") if os.path.isfile(training) else None
    name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.model_dir))
    path = export_saved_model(model, FLAGS.export_root, name, FLAGS.version, FLAGS.overwrite,
                              config=config.to_dict(), threshold=threshold, class_names=class_names,
                              input_shape=input_shape, reading=FLAGS.reading)
    if threshold is not None:
        print(f"verify threshold: {threshold:.4f} from {source}")
    print(f"exported: {path}")


def run():
    run_main(main)


if __name__ == "__main__":
    run()
