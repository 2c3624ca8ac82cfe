"""Verification ("same or not?") and N-way one-shot evaluation (Siamese models)."""

import os

import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.evaluation.classification import SPATIAL_GRID, embed_split, extract_features, spatial_layer

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


def pair_similarity(model, e_a, e_b, chunk=8192):
    """`model.similarity` of embedding pairs, in chunks."""
    out = [model.similarity(tf.constant(e_a[i:i + chunk]), tf.constant(e_b[i:i + chunk])).numpy()
           for i in range(0, len(e_a), chunk)]
    return np.concatenate(out)


def evaluate_siamese(model, test, val, output_dir=None, train_classes=None, pairs=10000, trials=2000,
                     seed=1234):
    """Verification and N-way one-shot evaluation of a metric model: `Siamese`,
    or a triplet model (scored by Euclidean distance of its embeddings).

    * Verification: `pairs` balanced test pairs (`keras_ssl.data.pairs`, fixed
      seed); the threshold maximising accuracy is calibrated on as many pairs
      of the `val` split (images the run never trained on); reported in the
      model's own units (`threshold`: a distance, or a probability).
    * One-shot (Koch et al.): 10-way (or all classes) on the test split and,
      when `train_classes` held some classes out, N-way over the held-out
      classes (N = their number): `one_shot_accuracy` maps "N" or
      "N_heldout" to accuracy. `encoder_one_shot_accuracy`: the same trials
      scored by Euclidean distance of the encoder's features (before the
      embedding head, as SimCLR reads its encoder before the projection): the
      head is fitted to the training classes, the layer below it carries
      more to classes it never saw (docs/BENCHMARKS.md, issue 35). For a
      convolutional encoder also `grid_one_shot_accuracy`: its last map
      averaged over 2x2 regions (`grid_one_shot_reading`, the probes' spatial
      reading).
    Writes `roc.png` in `output_dir`.
    """
    from keras_ssl.data.pairs import pair_indices

    e_test = embed_split(model, test)
    e_val = embed_split(model, val)
    i, j, same = (t.numpy() for t in pair_indices(test.labels, pairs, seed=seed))
    vi, vj, vsame = (t.numpy() for t in pair_indices(val.labels, pairs, seed=seed + 1))
    sim = pair_similarity(model, e_test[i], e_test[j])
    vsim = pair_similarity(model, e_val[vi], e_val[vj])
    results = verification_metrics(vsame, vsim, same, sim)
    sim_threshold = results.pop("similarity_threshold")
    by_distance = model.SCORE_NAME == "distance"
    results["threshold"] = -sim_threshold if by_distance else sim_threshold
    results["threshold_units"] = "distance" if by_distance else "probability"
    results["verification_pairs"] = int(pairs)

    def score_fn(query, support):
        q = np.repeat(query[:, None, :], support.shape[1], axis=1).reshape(-1, query.shape[1])
        s = support.reshape(-1, support.shape[-1])
        return pair_similarity(model, q, s).reshape(support.shape[:2])

    classes = np.unique(test.labels)
    ways = {str(min(10, len(classes))): None}
    if train_classes is not None:
        held = [c for c in classes if c not in set(train_classes)]
        if len(held) >= 2:
            ways[f"{len(held)}_heldout"] = held

    def one_shot(features, scores):
        return {name: one_shot_accuracy(features, test.labels, len(held) if held else int(name), trials,
                                        classes=held, seed=seed, score_fn=scores) for name, held in ways.items()}

    results["one_shot_accuracy"] = one_shot(e_test, score_fn)
    encoder = getattr(model, "encoder", None)
    if encoder is not None:
        results["encoder_one_shot_accuracy"] = one_shot(extract_features(encoder, test).astype(np.float64),
                                                        _neg_euclidean)
        stage = spatial_layer(encoder)
        if stage is not None:
            reading = f"{stage}:grid{SPATIAL_GRID}"
            results["grid_one_shot_accuracy"] = one_shot(
                extract_features(encoder, test, layer=reading).astype(np.float64), _neg_euclidean)
            results["grid_one_shot_reading"] = reading
    if output_dir:
        results["roc_plot"] = roc_plot(same, sim, os.path.join(output_dir, "roc.png"),
                                       f"{type(model).__name__} verification ROC")
    return results
