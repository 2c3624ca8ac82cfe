"""Frozen-encoder evaluation: linear probe, kNN, 2-D embedding plot, report files.

All metrics are fractions in [0, 1]. The protocol is the standard one for
self-supervised representations: features of the *unaugmented* train and
test images (the same preprocessing as the exported model: uint8 / 255) from
the frozen encoder; a classifier fit on train features is scored on test.
"""

import json
import os

import numpy as np
import tensorflow as tf

from keras_ssl.data.views import eval_batches
from keras_ssl.errors import UserError

KNN_TEMPERATURE = 0.07  # Wu et al. 2018 (InstDisc), as solo-learn's weighted kNN


def feature_model(encoder, layer=None):
    """The encoder, or a model up to `layer` (a name such as `block2`), pooled to vectors."""
    if layer is None or layer == "features":
        return encoder
    try:
        output = encoder.get_layer(layer).output
    except ValueError:
        names = [lyr.name for lyr in encoder.layers if lyr.name.startswith("block")]
        raise UserError(f"encoder has no layer {layer!r}; probe points are {names + ['features']}")
    import keras

    if len(output.shape) == 4:
        output = keras.layers.GlobalAveragePooling2D(name=f"{layer}_pool")(output)
    return keras.Model(encoder.input, output, name=f"{encoder.name}_{layer}")


def extract_features(encoder, split, batch_size=512, layer=None):
    """float32 features `[N, D]` of a split's unaugmented images."""
    model = feature_model(encoder, layer)
    predict = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32), reduce_retracing=True)
    chunks = [predict(batch[0]).numpy() for batch in eval_batches(split, batch_size)]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, model.output_shape[-1]), np.float32)


def linear_probe(train_x, train_y, test_x, test_y, max_iter=1000, C=1.0):
    """Test accuracy of a logistic regression on standardised features.

    scikit-learn's multinomial `LogisticRegression` (lbfgs, L2, `C=1`) after a
    `StandardScaler` fit on the train features; the SimCLR paper's protocol
    (Appendix B.5) with sklearn's defaults.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=max_iter, C=C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train_x), train_y)
    return float(np.mean(clf.predict(scaler.transform(test_x)) == test_y))


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


def evaluate_encoder(encoder, dataset, output_dir=None, layers=None, plot="tsne", knn_k=(20, 200),
                     probe_max_iter=1000, train_limit=None, extra=None):
    """The shared evaluator: probe + kNN at each probe point, plot, `evaluation.json`.

    Args:
      encoder: frozen encoder (a Keras model, images in [0, 1] -> features).
      dataset: an `ImageDataset` with labels.
      output_dir: where `evaluation.json` and `embedding.png` go (None: nowhere).
      layers: extra probe points (e.g. `["block2"]`); the encoder output is
        always evaluated and gives the top-level keys.
      plot: `tsne`, `pca` or None.
      train_limit: use only the first N train images (quick checks).
      extra: more key/values to store in the report.
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
    for layer in [None] + [lyr for lyr in (layers or []) if lyr != "features"]:
        tr = extract_features(encoder, train, layer=layer)
        te = extract_features(encoder, dataset.test, layer=layer)
        scores = evaluate_features(tr, train.labels, te, dataset.test.labels, num_classes, knn_k, probe_max_iter)
        if layer is None:
            results.update(scores)
            results["feature_dim"] = int(tr.shape[1])
            test_features = te
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
        write_json_atomic(os.path.join(output_dir, "evaluation.json"), results)
    return results


def write_json_atomic(path, obj):
    """Writes JSON to `path` via a temporary file and rename (never half a file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def format_table(results):
    """A plain-text table of the accuracies (and verification figures) in `results`."""
    rows = [("metric", "value")]
    for key in sorted(results):
        value = results[key]
        if isinstance(value, dict) and key == "one_shot_accuracy":
            rows += [(f"one_shot_accuracy[{n.replace('_heldout', '')}-way{', held-out' if 'held' in n else ''}]",
                      f"{100 * v:.2f}%") for n, v in sorted(value.items())]
        elif key.endswith("accuracy") or "_accuracy_" in key or key.endswith("_rate") or key == "eer":
            rows.append((key, f"{100 * value:.2f}%"))
        elif key == "roc_auc":
            rows.append((key, f"{value:.4f}"))
        elif key in ("precision_at_1", "r_precision", "map_at_r", "pretext_accuracy"):
            rows.append((key, f"{100 * value:.2f}%"))
        elif key == "recall_at_k":
            rows += [(f"recall_at_{k}", f"{100 * v:.2f}%") for k, v in sorted(value.items(), key=lambda t: int(t[0]))]
        elif key == "heldout_retrieval":
            rows += [(f"heldout/{k}", f"{100 * value[k]:.2f}%") for k in ("precision_at_1", "map_at_r")]
        elif key == "threshold":
            rows.append((f"threshold ({results.get('threshold_units', '')})", f"{value:.4f}"))
    for layer, scores in sorted(results.get("per_layer", {}).items()):
        for key in sorted(scores):
            if "accuracy" in key:
                rows.append((f"{layer}/{key}", f"{100 * scores[key]:.2f}%"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>8}" for a, b in rows]
    lines.insert(1, "-" * (width + 10))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Verification ("same or not?") and N-way one-shot
# --------------------------------------------------------------------------

def equal_error_rate(same, similarity):
    """The rate where false accepts equal false rejects, and the similarity there.

    Linear interpolation between the two ROC points where FNR - FPR changes sign.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(same, similarity)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from 1 to -1 along the curve
    i = int(np.argmax(diff <= 0))
    if i == 0:
        return float(fpr[0]), float(thresholds[0])
    w = diff[i - 1] / (diff[i - 1] - diff[i])
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    return float(eer), float(thresholds[i])


def best_threshold(same, similarity):
    """The threshold t maximising accuracy of "same iff similarity >= t" (midpoints)."""
    same = np.asarray(same).astype(bool)
    order = np.argsort(-similarity, kind="stable")
    s, y = similarity[order], same[order]
    # accepting the first k: correct = positives among them + negatives after them
    tp = np.concatenate([[0], np.cumsum(y)])
    tn = np.concatenate([[np.sum(~y)], np.sum(~y) - np.cumsum(~y)])
    acc = (tp + tn) / len(y)
    # only cut between distinct values
    valid = np.concatenate([[True], s[1:] != s[:-1], [True]])
    acc = np.where(valid, acc, -1)
    k = int(np.argmax(acc))
    if k == 0:
        return float(s[0] + 1.0)
    if k == len(s):
        return float(s[-1])
    return float((s[k - 1] + s[k]) / 2.0)


def verification_metrics(val_same, val_similarity, test_same, test_similarity):
    """ROC AUC and EER on test; threshold calibrated for accuracy on validation;
    accuracy, false-accept and false-reject rates at that threshold on test.

    Similarity: higher means "more likely the same class" (pass `-distance`).
    """
    from sklearn.metrics import roc_auc_score

    test_same = np.asarray(test_same).astype(bool)
    threshold = best_threshold(val_same, np.asarray(val_similarity))
    accept = np.asarray(test_similarity) >= threshold
    eer, _ = equal_error_rate(test_same, test_similarity)
    return {
        "roc_auc": float(roc_auc_score(test_same, test_similarity)),
        "eer": eer,
        "similarity_threshold": threshold,
        "verification_accuracy": float(np.mean(accept == test_same)),
        "false_accept_rate": float(np.mean(accept[~test_same])) if np.any(~test_same) else 0.0,
        "false_reject_rate": float(np.mean(~accept[test_same])) if np.any(test_same) else 0.0,
    }


def roc_plot(same, similarity, path, title="ROC"):
    """Saves the ROC curve (with AUC and EER in the legend) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(same, similarity)
    eer, _ = equal_error_rate(same, similarity)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(same, similarity):.4f}, EER {eer:.4f}")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _neg_euclidean(query, support):
    return -np.sqrt(np.sum((support - query[:, None, :]) ** 2, axis=-1))


def one_shot_accuracy(features, labels, n_way, trials=2000, classes=None, seed=0, score_fn=_neg_euclidean):
    """N-way one-shot accuracy (Koch et al. 2015) over `trials` random trials.

    Each trial draws `n_way` classes (from `classes`, default all), one support
    example per class and one query of the first class (never its support);
    it is correct when the query's highest-scoring support is of its class.
    `score_fn(query [T, D], support [T, N, D]) -> [T, N]`, higher = more alike.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels) if classes is None else np.asarray(classes)
    if n_way < 2 or n_way > len(classes):
        raise UserError(f"n_way must be between 2 and the number of classes ({len(classes)}), got {n_way}")
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    if any(len(members[c]) < 2 for c in classes):
        raise UserError("one-shot trials need at least 2 examples of every class")
    queries, supports = np.empty(trials, int), np.empty((trials, n_way), int)
    for t in range(trials):
        chosen = rng.choice(classes, n_way, replace=False)  # chosen[0]: the query's class
        q, s0 = rng.choice(members[chosen[0]], 2, replace=False)
        queries[t] = q
        supports[t] = [s0] + [rng.choice(members[c]) for c in chosen[1:]]
    # The true support sits in a random column, so ties cannot favour it.
    shift = rng.integers(0, n_way, trials)
    columns = (np.arange(n_way)[None, :] - shift[:, None]) % n_way
    supports = np.take_along_axis(supports, columns, axis=1)
    scores = score_fn(features[queries], features[supports])
    return float(np.mean(np.argmax(scores, axis=1) == shift))


def _embed_split(model, split, batch_size=512):
    embed = tf.function(lambda x: model.embed(x, training=False), reduce_retracing=True)
    return np.concatenate([embed(b[0]).numpy() for b in eval_batches(split, batch_size)], axis=0)


def _pair_similarity(model, e_a, e_b, chunk=8192):
    out = [model.similarity(tf.constant(e_a[i:i + chunk]), tf.constant(e_b[i:i + chunk])).numpy()
           for i in range(0, len(e_a), chunk)]
    return np.concatenate(out)


def evaluate_siamese(model, test, val, output_dir=None, train_classes=None, pairs=10000, trials=2000,
                     seed=1234):
    """Verification and N-way one-shot evaluation of a `Siamese` model.

    * Verification: `pairs` balanced test pairs (`keras_ssl.data.pairs`, fixed
      seed); the threshold maximising accuracy is calibrated on as many pairs
      of the `val` split (images the run never trained on); reported in the
      model's own units (`threshold`: a distance, or a probability).
    * One-shot (Koch et al.): 10-way (or all classes) on the test split and,
      when `train_classes` held some classes out, N-way over the held-out
      classes (N = their number): `one_shot_accuracy` maps "N" or
      "N_heldout" to accuracy.
    Writes `roc.png` in `output_dir`.
    """
    from keras_ssl.data.pairs import pair_indices

    e_test = _embed_split(model, test)
    e_val = _embed_split(model, val)
    i, j, same = (t.numpy() for t in pair_indices(test.labels, pairs, seed=seed))
    vi, vj, vsame = (t.numpy() for t in pair_indices(val.labels, pairs, seed=seed + 1))
    sim = _pair_similarity(model, e_test[i], e_test[j])
    vsim = _pair_similarity(model, e_val[vi], e_val[vj])
    results = verification_metrics(vsame, vsim, same, sim)
    sim_threshold = results.pop("similarity_threshold")
    results["threshold"] = -sim_threshold if model.head == "distance" else sim_threshold
    results["threshold_units"] = "distance" if model.head == "distance" else "probability"
    results["verification_pairs"] = int(pairs)

    def score_fn(query, support):
        q = np.repeat(query[:, None, :], support.shape[1], axis=1).reshape(-1, query.shape[1])
        s = support.reshape(-1, support.shape[-1])
        return _pair_similarity(model, q, s).reshape(support.shape[:2])

    classes = np.unique(test.labels)
    one_shot = {str(min(10, len(classes))): one_shot_accuracy(e_test, test.labels, min(10, len(classes)), trials,
                                                             seed=seed, score_fn=score_fn)}
    if train_classes is not None:
        held = [c for c in classes if c not in set(train_classes)]
        if len(held) >= 2:
            one_shot[f"{len(held)}_heldout"] = one_shot_accuracy(e_test, test.labels, len(held), trials,
                                                                 classes=held, seed=seed, score_fn=score_fn)
    results["one_shot_accuracy"] = one_shot
    if output_dir:
        results["roc_plot"] = roc_plot(same, sim, os.path.join(output_dir, "roc.png"), "Siamese verification ROC")
    return results


# --------------------------------------------------------------------------
# Retrieval (Musgrave et al. 2020, "A Metric Learning Reality Check")
# --------------------------------------------------------------------------

def retrieval_metrics(embeddings, labels, index_embeddings=None, index_labels=None, ks=(1, 5, 10),
                      metric="euclidean", chunk=512):
    """Precision@1, recall@k, R-precision and MAP@R, exact, computed in chunks.

    Without an index the queries are their own index, leave-one-out (a query
    never retrieves itself). For a query with R relevant items (same label) in
    the index: R-precision = relevant among the top R / R; MAP@R =
    (1/R) sum_{i<=R} P@i * rel(i); recall@k = 1 if any of the top k is
    relevant. Queries with R = 0 are skipped. Memory: `chunk x N_index`.
    """
    if metric not in ("euclidean", "cosine"):
        raise UserError(f"metric must be euclidean or cosine, got {metric!r}")
    leave_one_out = index_embeddings is None
    q = tf.constant(embeddings, tf.float32)
    idx = q if leave_one_out else tf.constant(index_embeddings, tf.float32)
    q_labels = np.asarray(labels)
    i_labels = q_labels if leave_one_out else np.asarray(index_labels)
    if metric == "cosine":
        q, idx = tf.math.l2_normalize(q, axis=1), tf.math.l2_normalize(idx, axis=1)
    counts = {c: int(np.sum(i_labels == c)) for c in np.unique(q_labels)}
    r_all = np.array([counts.get(c, 0) for c in q_labels]) - (1 if leave_one_out else 0)
    depth = int(max(max(ks), r_all.max(initial=1)))
    depth = min(depth, len(i_labels) - (1 if leave_one_out else 0))
    idx_sq = tf.reduce_sum(tf.square(idx), axis=1)
    idx_labels_t = tf.constant(i_labels)
    sums = {"p1": 0.0, "rp": 0.0, "map": 0.0, **{f"r{k}": 0.0 for k in ks}}
    n_valid = 0
    for start in range(0, len(q_labels), chunk):
        qc = q[start:start + chunk]
        # similarity: higher = closer (negative squared distance, or cosine)
        sim = tf.matmul(qc, idx, transpose_b=True)
        if metric == "euclidean":
            sim = 2.0 * sim - idx_sq[None, :] - tf.reduce_sum(tf.square(qc), axis=1, keepdims=True)
        if leave_one_out:
            rows = tf.range(tf.shape(qc)[0])
            sim = tf.tensor_scatter_nd_update(sim, tf.stack([rows, rows + start], axis=1),
                                              tf.fill([tf.shape(qc)[0]], -np.inf))
        _, top = tf.math.top_k(sim, k=depth)
        rel = (tf.gather(idx_labels_t, top).numpy() == q_labels[start:start + chunk, None])
        r = r_all[start:start + chunk]
        valid = r > 0
        rel, r = rel[valid], r[valid]
        n_valid += len(r)
        sums["p1"] += rel[:, 0].sum()
        ranks = np.arange(1, depth + 1)
        within_r = ranks[None, :] <= r[:, None]
        rel_r = rel & within_r
        sums["rp"] += (rel_r.sum(1) / r).sum()
        precision_at_i = np.cumsum(rel, axis=1) / ranks[None, :]
        sums["map"] += ((precision_at_i * rel_r).sum(1) / r).sum()
        for k in ks:
            sums[f"r{k}"] += rel[:, :k].any(1).sum()
    n = max(n_valid, 1)
    return {
        "precision_at_1": float(sums["p1"] / n),
        "r_precision": float(sums["rp"] / n),
        "map_at_r": float(sums["map"] / n),
        "recall_at_k": {str(k): float(sums[f"r{k}"] / n) for k in ks},
        "retrieval_queries": int(n_valid),
    }


def retrieval_grid(images, embeddings, labels, path, n_queries=8, k=8, seed=0):
    """PNG: each row a query image (left) and its k nearest neighbours; a red
    frame marks a neighbour of another class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    queries = rng.choice(len(images), min(n_queries, len(images)), replace=False)
    e = tf.constant(embeddings, tf.float32)
    d = tf.reduce_sum(tf.square(tf.gather(e, queries)[:, None, :] - e[None, :, :]), axis=-1)
    d = tf.tensor_scatter_nd_update(d, tf.stack([tf.range(len(queries)), tf.constant(queries, tf.int32)], 1),
                                    tf.fill([len(queries)], np.inf))
    neighbours = tf.math.top_k(-d, k=k).indices.numpy()
    h, w = images.shape[1:3]
    pad, scale = 3, max(1, 64 // h)
    grid = np.full(((h + 2 * pad) * len(queries), (w + 2 * pad) * (k + 1) + pad, 3), 255, np.uint8)
    for r, q in enumerate(queries):
        for c, idx in enumerate([q] + list(neighbours[r])):
            y, x = r * (h + 2 * pad) + pad, c * (w + 2 * pad) + pad + (pad if c else 0)
            tile = images[idx]
            tile = np.repeat(tile, 3, axis=-1) if tile.shape[-1] == 1 else tile
            color = (0, 0, 255) if c == 0 else ((0, 160, 0) if labels[idx] == labels[q] else (220, 0, 0))
            grid[y - 2:y + h + 2, x - 2:x + w + 2] = color
            grid[y:y + h, x:x + w] = tile
    grid = np.kron(grid, np.ones((scale, scale, 1), np.uint8))
    Image.fromarray(grid).save(path)
    return path


def evaluate_retrieval(model, dataset, output_dir=None, train_classes=None):
    """Retrieval on the test split, leave-one-out (index = test set), with
    `model.embed`; also restricted to classes held out of training when
    `train_classes` is given (`heldout_retrieval`). Writes `retrieval.png`."""
    test = dataset.test
    e = _embed_split(model, test)
    results = retrieval_metrics(e, test.labels)
    if train_classes is not None:
        held = ~np.isin(test.labels, train_classes)
        if held.any():
            results["heldout_retrieval"] = retrieval_metrics(e[held], test.labels[held])
    if output_dir:
        results["retrieval_plot"] = retrieval_grid(test.images, e, test.labels,
                                                   os.path.join(output_dir, "retrieval.png"))
    return results


def pretext_accuracy(model, split, batch_size=256):
    """Rotation-prediction accuracy on a split: every image in its four rotations."""
    from keras_ssl.data.pretext import rotate_all

    hits, total = 0, 0
    for (images,) in tf.data.Dataset.from_tensor_slices((split.images,)).batch(batch_size):
        x, y = rotate_all(tf.cast(images, tf.float32) / 255.0)
        pred = tf.argmax(model.rotation_probabilities(x), axis=-1, output_type=tf.int32)
        hits += int(tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.int32)))
        total += int(tf.size(y))
    return hits / max(total, 1)
