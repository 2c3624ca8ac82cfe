"""keras-ssl-evaluate: linear probe and kNN of a trained encoder, plus an embedding plot.

    keras-ssl-evaluate --model_dir=runs/simclr_fashion_mnist

Writes <model_dir>/evaluation.json and <model_dir>/embedding.png and prints a table.
Unlabelled image datasets (a flat `folder:`) get what needs no labels instead: the
method's own metrics on the test split, k-means clusters and their silhouette, the
embedding coloured by cluster and a nearest-neighbour grid (`neighbours.png`;
`keras_ssl.evaluation.unlabelled`).
Audio runs get word and speaker probes of every probe point against MFCCs and
the untrained model (`keras_ssl.evaluation.audio`); an unlabelled audio folder
gets the label-free report (no neighbour grid).
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
    from keras_ssl.evaluation.request import EvaluationRequest
    from keras_ssl.health import check_model
    from keras_ssl.saving import load_model
    from keras_ssl.training import run_modality

    config, encoder_path = load_run(FLAGS.model_dir)
    check_writable(FLAGS.model_dir, "--model_dir")  # evaluation.json and the plots go there
    model = load_model(os.path.join(FLAGS.model_dir, "model.keras"))
    # Refuse a diverged or collapsed model before computing anything (its figures would mislead).
    check_model(model, f"the model in {FLAGS.model_dir}")
    modality = run_modality(config)
    request = EvaluationRequest(output_dir=FLAGS.model_dir, layers=tuple(FLAGS.layers),
                                plot=None if FLAGS.plot == "none" else FLAGS.plot,
                                probe_max_iter=FLAGS.probe_max_iter, train_limit=FLAGS.train_limit)
    # as the kept model takes it (an image run is evaluated at the size its encoder kept)
    dataset = modality.load_run_dataset(config, FLAGS.dataset, FLAGS.data_dir,
                                        modality.serving_input_shape(config, FLAGS.model_dir))
    extra = {"method": config.method, "encoder": config.encoder, "epochs": config.epochs}
    _method_evaluations(config, model, dataset, extra, modality, labelled=dataset.labelled)
    if dataset.labelled:
        results, table = modality.evaluate_labelled(config, model, FLAGS.model_dir, dataset, request, extra)
    else:  # no probe or kNN: the method's own metrics, clusters (and for images a neighbour grid)
        from keras_ssl.evaluation.unlabelled import evaluate_unlabelled, format_unlabelled_table

        encoder = load_model(encoder_path)
        results = evaluate_unlabelled(model, encoder, dataset, config, FLAGS.model_dir, plot=request.plot, extra=extra)
        table = format_unlabelled_table(results)
    print(table)
    print(f"evaluation: {os.path.join(FLAGS.model_dir, 'evaluation.json')}")
    for key in ("embedding_plot", "roc_plot", "retrieval_plot", "neighbours_plot", "info_nce_plot"):
        if results.get(key):
            print(f"{key.replace('_', ' ')}: {results[key]}")


def _method_evaluations(config, model, dataset, extra, modality, labelled=True):
    """The representation's spread (collapse refused), then the method's declared evaluations
    (without labels: those that need none, the pretext task's and CPC's)."""
    from keras_ssl.evaluation.method_evaluations import LABEL_FREE_EVALUATIONS, METHOD_EVALUATIONS
    from keras_ssl.health import check_representation

    inputs = modality.examples(dataset.test.take(1000))
    spread, even = check_representation(model.predict(inputs, verbose=0), f"the model in {FLAGS.model_dir}")
    extra["representation_spread"] = spread / even  # 1 = evenly spread; see keras_ssl.health
    for name in config.method_spec.evaluations:  # the method's own, on the whole model (heads included)
        if not labelled and name not in LABEL_FREE_EVALUATIONS:
            continue
        extra.update(METHOD_EVALUATIONS[name](model, dataset, config, FLAGS.model_dir, FLAGS.train_limit))


def run():
    run_main(main)


if __name__ == "__main__":
    run()
