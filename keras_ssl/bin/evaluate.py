"""keras-ssl-evaluate: linear probe and kNN of a trained encoder, plus an embedding plot.

    keras-ssl-evaluate --model_dir=runs/simclr_fashion_mnist

Writes <model_dir>/evaluation.json and <model_dir>/embedding.png and prints a table.
"""

import os

from absl import flags

from keras_ssl.bin.common import check_writable, load_run, run_main

flags.DEFINE_string("model_dir", None, "run directory written by keras-ssl-train", required=True)
flags.DEFINE_string("dataset", None, "dataset to evaluate on (default: the one trained on)")
flags.DEFINE_string("data_dir", None, "where to look for dataset files first (default: as trained)")
flags.DEFINE_list("layers", [], "extra probe points, e.g. block2,block3")
flags.DEFINE_enum("plot", "tsne", ["tsne", "pca", "none"], "2-D embedding plot method")
flags.DEFINE_integer("train_limit", None, "fit the probe on only the first N train images")
flags.DEFINE_integer("probe_max_iter", 1000, "logistic-regression iterations")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from keras_ssl.data import load_source
    from keras_ssl.evaluation import evaluate_encoder, format_table
    from keras_ssl.evaluation.method_evaluations import METHOD_EVALUATIONS
    from keras_ssl.health import check_model, check_representation
    from keras_ssl.saving import load_model

    config, encoder_path = load_run(FLAGS.model_dir)
    check_writable(FLAGS.model_dir, "--model_dir")  # evaluation.json and the plots go there
    encoder = load_model(encoder_path)
    _, h, w, c = encoder.input_shape
    dataset = load_source(FLAGS.dataset or config.dataset, FLAGS.data_dir or config.data_dir, (h, w), c)
    extra = {"method": config.method, "encoder": config.encoder, "epochs": config.epochs}
    model = load_model(os.path.join(FLAGS.model_dir, "model.keras"))
    # Refuse a diverged or collapsed model before computing anything (its figures would mislead).
    check_model(model, f"the model in {FLAGS.model_dir}")
    spread, even = check_representation(model.predict(dataset.test.take(1000).images, verbose=0),
                                        f"the model in {FLAGS.model_dir}")
    extra["representation_spread"] = spread / even  # 1 = evenly spread; see keras_ssl.health
    for name in config.method_spec.evaluations:  # the method's own, on the whole model (heads included)
            extra.update(METHOD_EVALUATIONS[name](model, dataset, config, FLAGS.model_dir, FLAGS.train_limit))
    results = evaluate_encoder(
        encoder, dataset, FLAGS.model_dir, layers=FLAGS.layers,
        plot=None if FLAGS.plot == "none" else FLAGS.plot, probe_max_iter=FLAGS.probe_max_iter,
        train_limit=FLAGS.train_limit, extra=extra)
    print(format_table(results))
    print(f"evaluation: {os.path.join(FLAGS.model_dir, 'evaluation.json')}")
    for key in ("embedding_plot", "roc_plot", "retrieval_plot"):
        if results.get(key):
            print(f"{key.replace('_', ' ')}: {results[key]}")


def run():
    run_main(main)


if __name__ == "__main__":
    run()
