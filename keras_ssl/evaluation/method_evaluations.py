"""The evaluations a method declares (`Method.evaluations`), by name: what
`keras-ssl-evaluate` runs and what the contract test checks.

Each `Evaluation` takes an `EvaluationContext` (the method model loaded from
`model.keras`, the dataset as the kept model takes it, the run's `TrainConfig`,
the run directory, the evaluator's settings) and returns a dict merged into
`evaluation.json`. It lists the report keys it always adds and the ones that
hold a plot's path, and whether it needs class labels (on an unlabelled
dataset only the label-free ones run, beside the clusters report of
`keras_ssl.evaluation.unlabelled`).

    probe          frozen-feature linear probe and kNN (the modality's: images,
                   audio word/speaker probes against MFCCs); every method's default
    verification   ROC AUC, EER, calibrated threshold, one-shot accuracy
    retrieval      P@1, R-precision, MAP@R, recall@k
    pretext        the pretext task's own test accuracy
    info_nce       CPC's InfoNCE accuracy, loss and MI bound per step ahead
    likelihood     negative ELBO and importance-weighted bound, nats and bits/dim
    reconstruction squared error of test reconstructions, their grid
    samples        a grid of samples from fixed seeds (and a latent traversal)
    codebook       a VQ-VAE's code usage (perplexity, codes used, histogram), recon bits/dim
    sample_score   a supervised classifier of the labels judges 1,000 samples (confident
                   share, class evenness, inception score)

A new kind (likelihood in bits/dim, reconstruction error, a samples grid,
perplexity) is one more `Evaluation` in `EVALUATIONS`.
"""

import dataclasses
import os
from typing import Callable


@dataclasses.dataclass(frozen=True)
class EvaluationContext:
    """What an evaluation gets: `model`, `dataset`, `config` (the run's), `model_dir`
    (where plots go; None: nowhere) and `request` (`EvaluationRequest`)."""

    model: object
    dataset: object
    config: object
    model_dir: str | None
    request: object


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A declared evaluation: `function(context) -> dict`, the `report_keys` it always
    adds, those of its `plots` (written when there is a run directory), whether it
    `needs_labels`, and `table(context, results) -> str`, the printed table when it is
    the report's main evaluation (the probe's)."""

    name: str
    summary: str
    function: Callable
    report_keys: tuple
    plots: tuple = ()
    needs_labels: bool = True
    table: Callable | None = None


def _modality(context):
    from keras_ssl import modalities

    return modalities.get(context.config.method_spec.modality)


def _probe(context):
    """The modality's frozen-feature evaluation: linear probe and kNN (and the audio probes)."""
    return _modality(context).evaluate_labelled(context.config, context.model, context.model_dir, context.dataset,
                                                context.request)


def _probe_table(context, results):
    return _modality(context).format_report(results)


def _verification(context):
    """ROC/EER, the threshold calibrated on images the run never trained on, one-shot."""
    from keras_ssl.config import parse_classes
    from keras_ssl.evaluation.verification import evaluate_siamese
    from keras_ssl.run_setup import training_split

    _, val = training_split(context.config, context.dataset)
    if val is None:  # no held-out images: calibrate on training images (optimistic)
        val = context.dataset.train.take(context.request.train_limit)
    return evaluate_siamese(context.model, context.dataset.test, val, context.model_dir,
                            parse_classes(context.config.train_classes))


def _retrieval(context):
    """P@1, R-precision, MAP@R, recall@k (and on held-out classes)."""
    from keras_ssl.config import parse_classes
    from keras_ssl.evaluation.retrieval import evaluate_retrieval

    return evaluate_retrieval(context.model, context.dataset, context.model_dir,
                              parse_classes(context.config.train_classes))


def _pretext(context):
    """The pretext task's own accuracy on the test split."""
    from keras_ssl.evaluation.pretext import pretext_accuracy

    return {"pretext_accuracy": pretext_accuracy(context.model, context.dataset.test)}


def _info_nce(context):
    """CPC's own task on the test examples: InfoNCE accuracy, loss and MI bound per
    step k (batches of the training batch size), and their plot."""
    from keras_ssl.evaluation.audio import prediction_plot
    from keras_ssl.evaluation.predictive_coding import step_metrics

    test = context.dataset.test
    inputs = _modality(context).examples(test)
    per_step = step_metrics(context.model, inputs, batch_size=min(context.config.batch_size, len(test)))
    result = {"info_nce": per_step}
    if context.model_dir:
        result["info_nce_plot"] = prediction_plot(per_step, os.path.join(context.model_dir, "info_nce.png"))
    return result


def _likelihood(context):
    """Bounds on the test negative log-likelihood (`keras_ssl.evaluation.generative`)."""
    from keras_ssl.evaluation.generative import likelihood_metrics

    return likelihood_metrics(context.model, context.dataset.test.images)


def _reconstruction(context):
    """Squared error of `model.reconstruct` on the test images, and their grid."""
    from keras_ssl.evaluation.generative import reconstruction_metrics

    path = os.path.join(context.model_dir, "reconstructions.png") if context.model_dir else None
    return reconstruction_metrics(context.model, context.dataset.test.images, path)


def _samples(context):
    """A grid of `model.sample_images(seeds)` (and a latent traversal where the model has one)."""
    from keras_ssl.evaluation.generative import sample_metrics

    return sample_metrics(context.model, context.dataset.test.images, context.model_dir)


def _sample_score(context):
    """The dataset's supervised classifier on 1,000 samples (`keras_ssl.evaluation.sample_score`)."""
    from keras_ssl.evaluation.sample_score import sample_score

    return sample_score(context.model, context.dataset)


def _codebook(context):
    """A VQ-VAE's code usage on the test images and the decoder's NLL given their codes
    (`keras_ssl.evaluation.codebook`)."""
    from keras_ssl.evaluation.codebook import evaluate_codebook

    return evaluate_codebook(context.model, context.dataset.test, context.model_dir)


EVALUATIONS = {e.name: e for e in (
    Evaluation("probe", "frozen-feature linear probe and kNN", _probe,
               ("linear_probe_accuracy", "knn_accuracy", "feature_dim"), ("embedding_plot",), table=_probe_table),
    Evaluation("verification", "ROC AUC, EER, calibrated threshold, one-shot accuracy", _verification,
               ("roc_auc", "eer", "threshold", "one_shot_accuracy"), ("roc_plot",)),
    Evaluation("retrieval", "P@1, R-precision, MAP@R, recall@k", _retrieval,
               ("precision_at_1", "r_precision", "map_at_r", "recall_at_k"), ("retrieval_plot",)),
    Evaluation("pretext", "the pretext task's test accuracy", _pretext, ("pretext_accuracy",), needs_labels=False),
    Evaluation("info_nce", "InfoNCE accuracy, loss and MI bound per step ahead", _info_nce, ("info_nce",),
               ("info_nce_plot",), needs_labels=False),
    Evaluation("likelihood", "negative ELBO and importance-weighted bound (nats, bits/dim)", _likelihood,
               ("test_nelbo_nats", "test_bits_per_dim", "test_iwae_nats", "test_iwae_bits_per_dim",
                "iwae_samples", "iwae_images"), needs_labels=False),
    Evaluation("reconstruction", "squared error of test reconstructions on [0, 1]", _reconstruction,
               ("reconstruction_mse",), ("reconstruction_plot",), needs_labels=False),
    Evaluation("samples", "samples from fixed seeds (and a latent traversal)", _samples, ("sample_seeds",),
               ("samples_plot", "traversal_plot"), needs_labels=False),
    Evaluation("codebook", "codebook perplexity, codes used and reconstruction bits/dim given the codes", _codebook,
               ("codebook_perplexity", "codes_used", "codebook_size", "recon_bits_per_dim", "recon_nll_nats"),
               ("codebook_usage_plot",), needs_labels=False),
    Evaluation("sample_score", "a supervised classifier labels 1,000 samples: confident share, class evenness, "
               "inception score", _sample_score,
               ("sample_confident_share", "sample_class_evenness", "sample_inception_score", "sample_class_counts",
                "sample_classifier_test_accuracy", "test_confident_share", "test_inception_score")),
)}
DEFAULT_EVALUATIONS = ("probe",)


def register_evaluation(declared):
    """Adds an `Evaluation` (a method's own, declared in its module before its
    `register(Method(...))` names it); a second one of the same name is refused."""
    if declared.name in EVALUATIONS and EVALUATIONS[declared.name] is not declared:
        raise ValueError(f"evaluation {declared.name!r} is registered twice")
    EVALUATIONS[declared.name] = declared
    return declared


def evaluation(name):
    """The declared `Evaluation` called `name` (a ValueError naming them otherwise)."""
    if name not in EVALUATIONS:
        raise ValueError(f"evaluation must be one of {', '.join(EVALUATIONS)}, got {name!r}")
    return EVALUATIONS[name]
