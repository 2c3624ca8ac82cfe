"""keras-ssl-evaluate: the evaluations a run's method declares (by default the linear probe
and kNN of its frozen encoder, plus an embedding plot; `keras_ssl.evaluation.run_report`).

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
flags.DEFINE_list("layers", [], "extra probe points, e.g. block2,block3 (a block's global mean) or block2:grid2 "
                  "(its map pooled over 2x2 regions)")
flags.DEFINE_string("grid_reading", "auto", "the spatially pooled reading reported as grid_* (image runs): auto "
                    "(the last map over 2x2 regions), none, or a block over N x N regions, e.g. block2:grid3")
flags.DEFINE_enum("plot", "tsne", ["tsne", "pca", "none"], "2-D embedding plot method")
flags.DEFINE_integer("train_limit", None, "fit the probe on only the first N train images")
flags.DEFINE_integer("probe_max_iter", 1000, "logistic-regression iterations")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from keras_ssl.evaluation.request import EvaluationRequest
    from keras_ssl.evaluation.run_report import evaluate_run

    load_run(FLAGS.model_dir)  # a finished run (else one line naming why)
    check_writable(FLAGS.model_dir, "--model_dir")  # evaluation.json and the plots go there
    request = EvaluationRequest(output_dir=FLAGS.model_dir, layers=tuple(FLAGS.layers),
                                plot=None if FLAGS.plot == "none" else FLAGS.plot,
                                probe_max_iter=FLAGS.probe_max_iter, train_limit=FLAGS.train_limit,
                                grid_reading=FLAGS.grid_reading)
    _, table, plots = evaluate_run(FLAGS.model_dir, request, FLAGS.dataset, FLAGS.data_dir)
    print(table)
    print(f"evaluation: {os.path.join(FLAGS.model_dir, 'evaluation.json')}")
    for key, path in plots.items():
        print(f"{key.replace('_', ' ')}: {path}")


def run():
    run_main(main)


if __name__ == "__main__":
    run()
