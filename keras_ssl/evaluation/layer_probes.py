"""Linear probe and kNN at every Transformer block of an image Transformer (MAE, iGPT).

iGPT's best linear features are in the middle of the network, not at its end (Chen et
al. 2020), so `keras-ssl-evaluate` probes each block of the encoder
(`keras_ssl.image_transformers`): the block's tokens `[B, T, D]`, mean-pooled over the
sequence (iGPT's average pooling; MAE's mean of the patch tokens, every patch visible),
through the same linear probe (standardised features, multinomial logistic regression)
and weighted kNN (k = 20) as the `probe` evaluation. One forward pass gives every block.
"""

import numpy as np

from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation


def block_features(encoder, split, batch_size=512):
    """`{block name: float32 [N, D]}`: each Transformer block's mean-pooled tokens."""
    import keras
    import tensorflow as tf

    from keras_ssl.data.views import eval_batches
    from keras_ssl.image_transformers import block_names

    names = block_names(encoder)
    pooled = [keras.layers.GlobalAveragePooling1D(name=f"{n}_pool")(encoder.get_layer(n).output) for n in names]
    model = keras.Model(encoder.input, pooled, name=f"{encoder.name}_blocks")
    predict = tf.function(lambda x: [tf.cast(y, tf.float32) for y in model(x, training=False)], reduce_retracing=True)
    chunks = [[y.numpy() for y in predict(batch[0])] for batch in eval_batches(split, batch_size)]
    return {n: np.concatenate([c[i] for c in chunks]) for i, n in enumerate(names)}


def layer_probe_metrics(encoder, dataset, probe_max_iter=1000, train_limit=None, knn_k=(20,)):
    """`{"layer_probes": {block: {linear_probe_accuracy, knn_accuracy, feature_dim}},
    "best_layer": the block of the best linear probe}`."""
    from keras_ssl.evaluation.classification import evaluate_features

    train = dataset.train.take(train_limit)
    num_classes = dataset.num_classes or int(max(train.labels.max(), dataset.test.labels.max())) + 1
    train_features, test_features = block_features(encoder, train), block_features(encoder, dataset.test)
    probes = {}
    for name, features in train_features.items():
        scores = evaluate_features(features, train.labels, test_features[name], dataset.test.labels, num_classes,
                                   knn_k, probe_max_iter)
        probes[name] = {"linear_probe_accuracy": scores["linear_probe_accuracy"],
                        "knn_accuracy": scores["knn_accuracy"], "feature_dim": int(features.shape[1])}
    best = max(probes, key=lambda n: probes[n]["linear_probe_accuracy"])
    return {"layer_probes": probes, "best_layer": best}


def _layer_probes(context):
    return layer_probe_metrics(context.model.encoder, context.dataset, context.request.probe_max_iter,
                               context.request.train_limit)


LAYER_PROBES = register_evaluation(Evaluation(
    "layer_probes", "linear probe and kNN of every Transformer block's mean-pooled tokens", _layer_probes,
    ("layer_probes", "best_layer")))
