"""Frozen-encoder evaluation: linear probe, kNN, 2-D embedding plot, report files.

All metrics are fractions in [0, 1]. The protocol is the standard one for
self-supervised representations: features of the *unaugmented* train and
test images (the same preprocessing as the exported model: uint8 / 255) from
the frozen encoder; a classifier fit on train features is scored on test.

Split by job: `classification` (probe, kNN, plot, the shared evaluator),
`verification` (ROC/EER/threshold, one-shot), `retrieval` (P@1, MAP@R, ...),
`pretext`, `report` (JSON and tables). Everything is re-exported here.
"""

from keras_ssl.evaluation.classification import (KNN_TEMPERATURE, embed_split, embedding_plot, evaluate_encoder,
                                                 evaluate_features, extract_features, feature_model, knn_accuracy,
                                                 knn_predict, linear_probe)
from keras_ssl.evaluation.pretext import pretext_accuracy
from keras_ssl.evaluation.report import format_table, write_json_atomic
from keras_ssl.evaluation.retrieval import evaluate_retrieval, retrieval_grid, retrieval_metrics
from keras_ssl.evaluation.verification import (best_threshold, equal_error_rate, evaluate_siamese,
                                               one_shot_accuracy, pair_similarity, roc_plot,
                                               verification_metrics)

__all__ = [
    "KNN_TEMPERATURE", "embed_split", "embedding_plot", "evaluate_encoder", "evaluate_features",
    "extract_features", "feature_model", "knn_accuracy", "knn_predict", "linear_probe", "pretext_accuracy",
    "format_table", "write_json_atomic", "evaluate_retrieval", "retrieval_grid", "retrieval_metrics",
    "best_threshold", "equal_error_rate", "evaluate_siamese", "one_shot_accuracy", "pair_similarity",
    "roc_plot", "verification_metrics",
]
