"""Retrieval (Musgrave et al. 2020, "A Metric Learning Reality Check") for triplet models."""

import os

import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.evaluation.classification import embed_split

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
    """PNG: each row a query image (left, blue frame) and its k nearest
    neighbours, nearest first: a green frame marks a neighbour of the query's
    class, a red one another class (grey without `labels`). A caption line
    under the grid says so."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    queries = rng.choice(len(images), min(n_queries, len(images)), replace=False)
    e = tf.constant(embeddings, tf.float32)
    d = tf.reduce_sum(tf.square(tf.gather(e, queries)[:, None, :] - e[None, :, :]), axis=-1)
    d = tf.tensor_scatter_nd_update(d, tf.stack([tf.range(len(queries)), tf.constant(queries, tf.int32)], 1),
                                    tf.fill([len(queries)], np.inf))
    k = min(k, len(images) - 1)  # a split of a few images has fewer neighbours than the grid's columns
    neighbours = tf.math.top_k(-d, k=k).indices.numpy()
    h, w = images.shape[1:3]
    pad, scale = 3, max(1, 64 // h)
    grid = np.full(((h + 2 * pad) * len(queries), (w + 2 * pad) * (k + 1) + pad, 3), 255, np.uint8)
    for r, q in enumerate(queries):
        for c, idx in enumerate([q] + list(neighbours[r])):
            y, x = r * (h + 2 * pad) + pad, c * (w + 2 * pad) + pad + (pad if c else 0)
            tile = images[idx]
            tile = np.repeat(tile, 3, axis=-1) if tile.shape[-1] == 1 else tile
            if c == 0:
                color = (0, 0, 255)
            elif labels is None:
                color = (150, 150, 150)
            else:
                color = (0, 160, 0) if labels[idx] == labels[q] else (220, 0, 0)
            grid[y - 2:y + h + 2, x - 2:x + w + 2] = color
            grid[y:y + h, x:x + w] = tile
    grid = np.kron(grid, np.ones((scale, scale, 1), np.uint8))
    caption = ("blue: query; then its nearest neighbours, nearest first" + (
        "" if labels is None else "; green: same class, red: other class"))
    canvas = Image.new("RGB", (max(grid.shape[1], 6 * len(caption) + 8), grid.shape[0] + 16), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (0, 0))
    ImageDraw.Draw(canvas).text((4, grid.shape[0] + 2), caption, fill=(0, 0, 0))
    canvas.save(path)
    return path


def evaluate_retrieval(model, dataset, output_dir=None, train_classes=None):
    """Retrieval with `model.embed`, two protocols:

    * the test split against itself, leave-one-out (every test image a query, the other
      test images the index; Musgrave et al. 2020's protocol): the top-level keys;
    * the test images as queries against the training split as the index
      (`train_index_retrieval`: R is then the class's count in the training split, 6,000
      for Fashion-MNIST, so its MAP@R asks far more than the leave-one-out's 999).

    Also the leave-one-out restricted to classes held out of training when
    `train_classes` is given (`heldout_retrieval`). Writes `retrieval.png`."""
    test = dataset.test
    e = embed_split(model, test)
    results = retrieval_metrics(e, test.labels)
    if len(dataset.train):
        against_train = retrieval_metrics(e, test.labels, embed_split(model, dataset.train), dataset.train.labels)
        results["train_index_retrieval"] = {k: against_train[k] for k in ("precision_at_1", "r_precision",
                                                                           "map_at_r")}
    if train_classes is not None:
        held = ~np.isin(test.labels, train_classes)
        if held.any():
            results["heldout_retrieval"] = retrieval_metrics(e[held], test.labels[held])
    if output_dir:
        results["retrieval_plot"] = retrieval_grid(test.images, e, test.labels,
                                                   os.path.join(output_dir, "retrieval.png"))
    return results
