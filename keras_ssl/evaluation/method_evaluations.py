"""The evaluations a method declares (`Method.evaluations`), by name.

Each takes `(model, dataset, config, model_dir, train_limit)`: the method
model loaded from `model.keras`, the dataset at the encoder's image size, the
run's `TrainConfig`, where to write plots, and the probe's train limit; and
returns a dict merged into `evaluation.json`. The frozen-feature linear probe
and kNN run for every method and are not listed.
"""


def _verification(model, dataset, config, model_dir, train_limit):
    """ROC/EER, the threshold calibrated on images the run never trained on, one-shot."""
    from keras_ssl.evaluation.verification import evaluate_siamese
    from keras_ssl.training import parse_classes, training_split

    _, val = training_split(config, dataset)
    if val is None:  # no held-out images: calibrate on training images (optimistic)
        val = dataset.train.take(train_limit)
    return evaluate_siamese(model, dataset.test, val, model_dir, parse_classes(config.train_classes))


def _retrieval(model, dataset, config, model_dir, train_limit):
    """P@1, R-precision, MAP@R, recall@k (and on held-out classes)."""
    from keras_ssl.evaluation.retrieval import evaluate_retrieval
    from keras_ssl.config import parse_classes

    return evaluate_retrieval(model, dataset, model_dir, parse_classes(config.train_classes))


def _pretext(model, dataset, config, model_dir, train_limit):
    """The pretext task's own accuracy on the test split."""
    from keras_ssl.evaluation.pretext import pretext_accuracy

    return {"pretext_accuracy": pretext_accuracy(model, dataset.test)}


def _info_nce(model, dataset, config, model_dir, train_limit):
    """CPC's own task on the test clips: InfoNCE accuracy, loss and MI bound per
    step k (batches of the training batch size), and their plot."""
    import os

    from keras_ssl.evaluation.audio import prediction_plot

    per_step = model.step_metrics(dataset.test.waveforms, batch_size=min(config.batch_size, len(dataset.test)))
    result = {"info_nce": per_step}
    if model_dir:
        result["info_nce_plot"] = prediction_plot(per_step, os.path.join(model_dir, "info_nce.png"))
    return result


# Those that need no class labels (they run on unlabelled datasets too).
LABEL_FREE_EVALUATIONS = ("pretext", "info_nce")

METHOD_EVALUATIONS = {"verification": _verification, "retrieval": _retrieval, "pretext": _pretext,
                      "info_nce": _info_nce}
