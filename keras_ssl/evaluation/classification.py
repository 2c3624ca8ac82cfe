"""Frozen-encoder classification quality: features, linear probe, weighted kNN,
2-D embedding plot, and the shared evaluator that writes `evaluation.json`."""

import functools
import os

import numpy as np
import tensorflow as tf

from keras_ssl.data.views import eval_batches
from keras_ssl.errors import UserError
from keras_ssl.evaluation.report import write_json_atomic

KNN_TEMPERATURE = 0.07  # Wu et al. 2018 (InstDisc), as solo-learn's weighted kNN
# The spatially pooled reading of a convolutional encoder: its last feature map averaged over
# a SPATIAL_GRID x SPATIAL_GRID grid of regions, concatenated (Gidaris et al. 2018, RotNet,
# probe their middle blocks' maps pooled to a few cells, section 3.2.1). 2 is ours: 4 regions
# of small_cnn's 7x7 map, 512 features, below the 784 of raw 28x28 pixels.
SPATIAL_GRID = 2


def grid_pooling_matrix(grid_shape, cells):
    """float32 `[h*w, cells*cells]`: column `c` averages the positions of region `c`
    (row-major) of an `h x w` grid, region `i` of a side of `n` covering `floor(i n /
    cells) .. ceil((i + 1) n / cells) - 1` (adaptive average pooling: regions of an odd
    side share their middle row or column)."""
    h, w = (int(d) for d in grid_shape)

    def bounds(n):
        return [(i * n // cells, -(-(i + 1) * n // cells)) for i in range(cells)]

    matrix = np.zeros((h, w, cells * cells), np.float32)
    for r, (r0, r1) in enumerate(bounds(h)):
        for c, (c0, c1) in enumerate(bounds(w)):
            matrix[r0:r1, c0:c1, r * cells + c] = 1.0 / ((r1 - r0) * (c1 - c0))
    return matrix.reshape(h * w, cells * cells)


def region_means(maps, cells):
    """`[B, h, w, C]` feature maps -> `[B, cells*cells*C]`: the mean of each region of a
    `cells x cells` grid (`grid_pooling_matrix`), concatenated region by region."""
    h, w, c = (int(d) for d in maps.shape[1:])
    tokens = tf.reshape(tf.cast(maps, tf.float32), [-1, h * w, c])
    pooled = tf.einsum("btd,tr->brd", tokens, tf.constant(grid_pooling_matrix((h, w), cells)))
    return tf.reshape(pooled, [-1, cells * cells * c])


def _reading(layer):
    """`"block2"` -> ("block2", None); `"block2:grid2"` -> ("block2", 2)."""
    name, _, pooling = layer.partition(":")
    if not pooling:
        return name, None
    if not (pooling.startswith("grid") and pooling[4:].isdigit() and int(pooling[4:]) >= 1):
        raise UserError(f"probe point {layer!r}: after the colon give gridN (N x N regions, e.g. {name}:grid2), "
                        f"got {pooling!r}")
    return name, int(pooling[4:])


def feature_model(encoder, layer=None):
    """The encoder, or a model up to `layer` pooled to vectors: a name such as `block2`
    gives the layer's mean over space or time; `block2:grid2` its mean over each region of
    a 2 x 2 grid, concatenated (`region_means`; feature maps only)."""
    if layer is None or layer == "features":
        return encoder
    name, cells = _reading(layer)
    try:
        output = encoder.get_layer(name).output
    except ValueError:
        from keras_ssl.encoders import feature_layer_names

        raise UserError(f"encoder has no layer {name!r}; probe points are {feature_layer_names(encoder)} "
                        "(each may end in :gridN for its map pooled over N x N regions)")
    import keras

    if cells is not None:
        if len(output.shape) != 4:
            raise UserError(f"probe point {layer!r}: {name} gives shape {tuple(output.shape)}, not a feature map "
                            "[B, h, w, C]; :gridN applies to a convolutional encoder's maps")
        return _RegionMeansModel(keras.Model(encoder.input, output), cells)
    if len(output.shape) in (3, 4):  # a grid [B, h, w, C] or a sequence [B, T, C]: its mean
        pool = keras.layers.GlobalAveragePooling2D if len(output.shape) == 4 else keras.layers.GlobalAveragePooling1D
        output = pool(name=f"{name}_pool")(output)
    return keras.Model(encoder.input, output, name=f"{encoder.name}_{name}")


class _RegionMeansModel:
    """A feature-map model followed by `region_means` (callable as a model; evaluation only)."""

    def __init__(self, maps, cells):
        self.maps, self.cells = maps, cells
        h, w, c = maps.output_shape[1:]
        self.output_shape = (None, cells * cells * c)

    def __call__(self, x, training=False):
        return region_means(self.maps(x, training=training), self.cells)


def spatial_layer(encoder):
    """The name of the layer giving the encoder's last feature map (what its global
    pooling reads), or None for an encoder whose output is not pooled from a map."""
    last = encoder.layers[-1]
    if type(last).__name__ not in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return None
    return last.input._keras_history[0].name


def _float32_features(model, images):
    return tf.cast(model(images, training=False), tf.float32)


def extract_features(encoder, split, batch_size=512, layer=None):
    """float32 features `[N, D]` of a split's unaugmented images."""
    model = feature_model(encoder, layer)
    # A partial, not a lambda: TF counts traces per function's code object, so the lambdas of
    # several calls (one per reading and split) added up to its "frequent retracing" warning
    # although each traces at most twice (full batches, then the last partial one).
    predict = tf.function(functools.partial(_float32_features, model), reduce_retracing=True)
    chunks = [predict(batch[0]).numpy() for batch in eval_batches(split, batch_size)]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, model.output_shape[-1]), np.float32)


def linear_probe(train_x, train_y, test_x, test_y, max_iter=1000, C=1.0):
    """Test accuracy of a logistic regression on standardised features.

    scikit-learn's multinomial `LogisticRegression` (lbfgs, L2, `C=1`) after a
    `StandardScaler` fit on the train features; the SimCLR paper's protocol
    (Appendix B.5) with sklearn's defaults.
    """
    return float(np.mean(fitted_linear_probe(train_x, train_y, max_iter, C)(test_x) == test_y))


def fitted_linear_probe(train_x, train_y, max_iter=1000, C=1.0):
    """`linear_probe`'s classifier fitted once: a function of features `[N, D]` giving the
    predicted labels `[N]` (to score several test sets with one classifier)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=max_iter, C=C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train_x), train_y)
    return lambda test_x: clf.predict(scaler.transform(test_x))


def knn_predict(train_x, train_y, test_x, k=20, num_classes=None, temperature=KNN_TEMPERATURE,
                chunk=1024):
    """Weighted kNN on cosine similarity (Wu et al. 2018).

    Each of the `k` most similar train features votes for its class with
    weight `exp(similarity / temperature)`; computed in chunks of test rows so
    memory stays at `chunk x N_train`.
    """
    num_classes = num_classes or int(np.max(train_y)) + 1
    k = min(k, len(train_x))
    keys = tf.math.l2_normalize(tf.constant(train_x, tf.float32), axis=1)
    key_labels = tf.constant(train_y, tf.int32)
    preds = []
    for start in range(0, len(test_x), chunk):
        q = tf.math.l2_normalize(tf.constant(test_x[start:start + chunk], tf.float32), axis=1)
        sims = tf.matmul(q, keys, transpose_b=True)
        top_sims, top_idx = tf.math.top_k(sims, k=k)
        votes = tf.one_hot(tf.gather(key_labels, top_idx), num_classes) * tf.exp(top_sims / temperature)[..., None]
        preds.append(tf.argmax(tf.reduce_sum(votes, axis=1), axis=1).numpy())
    return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def knn_accuracy(train_x, train_y, test_x, test_y, k=20, num_classes=None):
    """Test accuracy of `knn_predict`."""
    return float(np.mean(knn_predict(train_x, train_y, test_x, k, num_classes) == test_y))


def embedding_plot(features, labels, path, class_names=(), method="tsne", max_points=2000, seed=0,
                   title=None):
    """Saves a 2-D scatter (t-SNE or PCA) of `max_points` test features as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(features))[:max_points]
    x = features[idx].astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(x) - 1)).fit_transform(x)
    elif method == "pca":
        u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
        xy = u[:, :2] * s[:2]
    else:
        raise UserError(f"unknown plot method {method!r}; choose tsne or pca")
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    y = labels[idx] if labels is not None else np.zeros(len(idx), int)
    for c in np.unique(y):
        name = class_names[c] if labels is not None and c < len(class_names) else str(c)
        ax.scatter(xy[y == c, 0], xy[y == c, 1], s=4, label=name)
    if labels is not None:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(title or f"{method.upper()} of {len(idx)} test embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_features(train_x, train_y, test_x, test_y, num_classes=None, knn_k=(20, 200),
                      probe_max_iter=1000):
    """Linear-probe and kNN accuracies; `knn_accuracy` is the first k (20)."""
    results = {"linear_probe_accuracy": linear_probe(train_x, train_y, test_x, test_y, probe_max_iter)}
    for i, k in enumerate(knn_k):
        acc = knn_accuracy(train_x, train_y, test_x, test_y, k, num_classes)
        results[f"knn_accuracy_k{k}"] = acc
        if i == 0:
            results["knn_accuracy"] = acc
    return results


def check_grid_reading(grid_reading):
    """`grid_reading` as `evaluate_encoder` takes it: "auto", None (or "none"), or
    `"<block>:grid<N>"` (else one UserError line)."""
    if grid_reading in ("none", None):
        return None
    if grid_reading == "auto":
        return grid_reading
    if _reading(grid_reading)[1] is None:
        raise UserError(f"grid reading {grid_reading!r}: give a block and its N x N regions, e.g. block2:grid3 "
                        "(or auto: the last map over 2x2 regions; none: no grid reading)")
    return grid_reading


def evaluate_encoder(encoder, dataset, output_dir=None, layers=None, plot="tsne", knn_k=(20, 200),
                     probe_max_iter=1000, train_limit=None, extra=None, write_report=True, grid_reading="auto"):
    """The shared evaluator: probe + kNN at each probe point, plot, `evaluation.json`.

    Besides the encoder's output (`linear_probe_accuracy`, `knn_accuracy`: the served
    representation), a convolutional encoder's map is read spatially pooled
    (`grid_linear_probe_accuracy`, `grid_knn_accuracy`, `grid_feature_dim`, `grid_reading`:
    its mean over each region of a grid, concatenated; its linear probe, and kNN at the first k
    only), which keeps where in the image a feature is. `grid_reading="auto"` reads the last
    map over `SPATIAL_GRID` x `SPATIAL_GRID` regions; a reading such as `"block2:grid3"` reads
    that block over 3x3 regions instead (the demo's: small_cnn's middle block); None, none.

    Args:
      encoder: frozen encoder (a Keras model, images in [0, 1] -> features).
      dataset: an `ImageDataset` with labels.
      output_dir: where `evaluation.json` and `embedding.png` go (None: nowhere).
      layers: extra probe points (e.g. `["block2"]`); the encoder output is
        always evaluated and gives the top-level keys.
      plot: `tsne`, `pca` or None.
      train_limit: use only the first N train images (quick checks).
      extra: more key/values to store in the report.
      write_report: write `evaluation.json` in `output_dir` (the plots go there
        either way).
      grid_reading: "auto", None ("none"), or a `block:gridN` reading for the `grid_*` figures.
    Returns the results dict (also written as JSON).
    """
    if not dataset.labelled:
        raise UserError(f"dataset {dataset.name} has no labels; linear probe and kNN need labelled "
                        "train and test splits")
    if len(dataset.test) == 0:
        raise UserError(f"dataset {dataset.name} has no test split to evaluate on")
    train = dataset.train.take(train_limit)
    num_classes = dataset.num_classes or int(max(train.labels.max(), dataset.test.labels.max())) + 1
    results = {"dataset": dataset.name, "train_images": len(train), "test_images": len(dataset.test)}
    test_features = None
    spatial_reading = check_grid_reading(grid_reading)
    if spatial_reading == "auto":
        stage = spatial_layer(encoder)
        spatial_reading = f"{stage}:grid{SPATIAL_GRID}" if stage else None
    readings = ([spatial_reading] if spatial_reading else []) + [
        lyr for lyr in (layers or []) if lyr not in ("features", spatial_reading)]
    for layer in readings:
        feature_model(encoder, layer)  # an unknown block or a map-less grid: refused before any probe runs
    for layer in [None] + readings:
        tr = extract_features(encoder, train, layer=layer)
        te = extract_features(encoder, dataset.test, layer=layer)
        scores = evaluate_features(tr, train.labels, te, dataset.test.labels, num_classes,
                                   knn_k[:1] if layer == spatial_reading else knn_k, probe_max_iter)
        if layer is None:
            results.update(scores)
            results["feature_dim"] = int(tr.shape[1])
            test_features = te
        elif layer == spatial_reading and "grid_linear_probe_accuracy" not in results:
            results.update({"grid_linear_probe_accuracy": scores["linear_probe_accuracy"],
                            "grid_knn_accuracy": scores["knn_accuracy"], "grid_feature_dim": int(tr.shape[1]),
                            "grid_reading": layer})
        else:
            results.setdefault("per_layer", {})[layer] = dict(scores, feature_dim=int(tr.shape[1]))
    if extra:
        results.update(extra)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        if plot:
            results["embedding_plot"] = embedding_plot(
                test_features, dataset.test.labels, os.path.join(output_dir, "embedding.png"),
                dataset.class_names, method=plot)
        if write_report:
            write_json_atomic(os.path.join(output_dir, "evaluation.json"), results)
    return results


def embed_split(model, split, batch_size=512):
    """`model.embed` of a split's unaugmented images, `[N, D]` float32 (metric models)."""
    embed = tf.function(lambda x: model.embed(x, training=False), reduce_retracing=True)
    return np.concatenate([embed(b[0]).numpy() for b in eval_batches(split, batch_size)], axis=0)
