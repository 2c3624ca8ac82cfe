"""Linear probe and kNN at every Transformer block of an image Transformer (MAE, iGPT).

iGPT's best linear features are in the middle of the network, not at its end (Chen et
al. 2020), so `keras-ssl-evaluate` probes each block of the encoder
(`keras_ssl.image_transformers`), its tokens `[B, T, D]` (one per patch for MAE's ViT,
one per pixel for iGPT, laid out on the image's grid) read two ways:

* **mean**: the mean over the sequence, `[B, D]` (iGPT's average pooling; MAE's mean
  of the patch tokens, every patch visible);
* **grid**: the tokens averaged over a `GRID x GRID` grid of regions of the token grid
  and concatenated, `[B, GRID^2 D]` (region `i` of a side of `n` tokens covers
  `floor(i n / GRID) .. ceil((i + 1) n / GRID) - 1`, adaptive average pooling). This is
  the spatially pooled probe RotNet reports for its middle blocks (Gidaris et al. 2018,
  section 3.2.1); `GRID = 3` (ours: 9 regions, 1,152 features at width 128, near the
  784 of raw 28x28 pixels).

Each goes through the same linear probe (standardised features, multinomial logistic
regression) and weighted kNN (k = 20) as the `probe` evaluation, for the trained
encoder and for the same network untrained (rebuilt from the run's settings with seed
0, as the text and audio evaluations do), so a block's score can be read against what
its architecture gives without training. One forward pass gives every block.
"""

import numpy as np

from keras_ssl.evaluation import classification
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation

GRID = 3


def grid_pooling_matrix(grid_shape, cells=GRID):
    """float32 `[h*w, cells*cells]`: column `c` averages the tokens of region `c`
    (row-major) of an `h x w` token grid (`keras_ssl.evaluation.classification`'s)."""
    return classification.grid_pooling_matrix(grid_shape, cells)


def token_grid(encoder):
    """`(h, w)`: the encoder's tokens laid out on the image (MAE's patch grid, iGPT's pixels)."""
    height, width = (int(d) for d in encoder.input_shape[1:3])
    names = [layer.name for layer in encoder.layers]
    if "patches" in names:
        patch = int(encoder.get_layer("patches").patch_size)
        return height // patch, width // patch
    return height, width


def block_features(encoder, split, batch_size=512):
    """`{block name: {"mean": float32 [N, D], "grid": float32 [N, GRID^2 D]}}`: each
    Transformer block's tokens pooled both ways."""
    import keras
    import tensorflow as tf

    from keras_ssl.data.views import eval_batches
    from keras_ssl.image_transformers import block_names

    names = block_names(encoder)
    model = keras.Model(encoder.input, [encoder.get_layer(n).output for n in names], name=f"{encoder.name}_blocks")
    h, w = token_grid(encoder)

    def pooled(x):
        out = []
        for tokens in model(x, training=False):
            tokens = tf.cast(tokens, tf.float32)
            maps = tf.reshape(tokens, [-1, h, w, tokens.shape[-1]])  # the tokens laid out on the image
            out += [tf.reduce_mean(tokens, axis=1), classification.region_means(maps, GRID)]
        return out

    predict = tf.function(pooled, reduce_retracing=True)
    chunks = [[y.numpy() for y in predict(batch[0])] for batch in eval_batches(split, batch_size)]
    return {n: {"mean": np.concatenate([c[2 * i] for c in chunks]),
                "grid": np.concatenate([c[2 * i + 1] for c in chunks])} for i, n in enumerate(names)}


def layer_probe_metrics(encoder, dataset, probe_max_iter=1000, train_limit=None, knn_k=(20,), untrained=None):
    """`{"layer_probes": {block: {linear_probe_accuracy, knn_accuracy, feature_dim,
    grid_linear_probe_accuracy, grid_knn_accuracy, grid_feature_dim[,
    untrained_linear_probe_accuracy, untrained_grid_linear_probe_accuracy]}},
    "best_layer", "best_grid_layer"}`: the blocks of the best linear probes read each way, and
    their accuracies (`best_layer_linear_probe_accuracy`, `best_grid_linear_probe_accuracy`,
    `untrained_best_grid_linear_probe_accuracy`: the printed table's rows).
    `untrained`: the same encoder untrained (linear probes only), or None."""
    from keras_ssl.evaluation.classification import evaluate_features, linear_probe

    train = dataset.train.take(train_limit)
    num_classes = dataset.num_classes or int(max(train.labels.max(), dataset.test.labels.max())) + 1
    probes = {}
    for name, features in _features(encoder, train, dataset.test).items():
        (train_mean, test_mean), (train_grid, test_grid) = features["mean"], features["grid"]
        mean = evaluate_features(train_mean, train.labels, test_mean, dataset.test.labels, num_classes, knn_k,
                                 probe_max_iter)
        grid = evaluate_features(train_grid, train.labels, test_grid, dataset.test.labels, num_classes, knn_k,
                                 probe_max_iter)
        probes[name] = {"linear_probe_accuracy": mean["linear_probe_accuracy"], "knn_accuracy": mean["knn_accuracy"],
                        "feature_dim": int(train_mean.shape[1]),
                        "grid_linear_probe_accuracy": grid["linear_probe_accuracy"],
                        "grid_knn_accuracy": grid["knn_accuracy"], "grid_feature_dim": int(train_grid.shape[1])}
    if untrained is not None:
        for name, features in _features(untrained, train, dataset.test).items():
            for kind, prefix in (("mean", "untrained_"), ("grid", "untrained_grid_")):
                (train_x, test_x) = features[kind]
                probes[name][f"{prefix}linear_probe_accuracy"] = linear_probe(train_x, train.labels, test_x,
                                                                            dataset.test.labels, probe_max_iter)
    best = max(probes, key=lambda n: probes[n]["linear_probe_accuracy"])
    best_grid = max(probes, key=lambda n: probes[n]["grid_linear_probe_accuracy"])
    result = {"layer_probes": probes, "best_layer": best, "best_grid_layer": best_grid,
              "best_layer_linear_probe_accuracy": probes[best]["linear_probe_accuracy"],
              "best_grid_linear_probe_accuracy": probes[best_grid]["grid_linear_probe_accuracy"]}
    if untrained is not None:  # the untrained network's best block under the same reading
        result["untrained_best_grid_linear_probe_accuracy"] = max(
            p["untrained_grid_linear_probe_accuracy"] for p in probes.values())
    return result


def _features(encoder, train, test):
    """`{block: {kind: (train features, test features)}}`."""
    train_f, test_f = block_features(encoder, train), block_features(encoder, test)
    return {n: {k: (train_f[n][k], test_f[n][k]) for k in train_f[n]} for n in train_f}


def _untrained_encoder(context):
    """The run's encoder rebuilt untrained (seed 0), or None without the run's settings."""
    import keras

    from keras_ssl.run_setup import build_model

    if context.config is None:
        return None
    keras.utils.set_random_seed(0)
    return build_model(context.config, context.dataset).encoder


def _layer_probes(context):
    return layer_probe_metrics(context.model.encoder, context.dataset, context.request.probe_max_iter,
                               context.request.train_limit, untrained=_untrained_encoder(context))


LAYER_PROBES = register_evaluation(Evaluation(
    "layer_probes", "linear probe and kNN of every Transformer block's tokens, mean-pooled and pooled on a 3x3 "
    "grid, trained and untrained", _layer_probes,
    ("layer_probes", "best_layer", "best_grid_layer", "best_layer_linear_probe_accuracy",
     "best_grid_linear_probe_accuracy")))
