"""Evaluation without labels: what can be said of a representation trained on
unlabelled images or audio clips (the main use of self-supervised learning).

* the method's own metrics on the test split (its loss and task accuracy, e.g.
  SimCLR's contrastive accuracy or the rotation accuracy), from the method's own
  training batches built on the test images (`Model.evaluate`);
* k-means clusters of the test representations (k = 10 by default, scikit-learn,
  on standardised features) and their silhouette score (-1..1, higher = better
  separated; a collapsed representation scores near 0 or cannot be clustered);
* `embedding.png`, the t-SNE/PCA map coloured by cluster, and for images
  `neighbours.png`, query images with their nearest test neighbours (cosine), to
  look at (audio: the representation is the model's, e.g. CPC's pooled context);
* `evaluation.json` with all of it.
"""

import dataclasses
import os

import numpy as np

from keras_ssl.errors import UserError


def method_test_metrics(model, config, split):
    """`model.evaluate` on the method's own batches of `split` (one pass, batches of
    `min(batch_size, len(split))`): `{metric: value}`."""
    from keras_ssl.run_setup import method_data, run_stage

    batch = min(config.batch_size, len(split))
    if batch < 2:
        raise UserError(f"the test split holds {len(split)} example(s); the method's metrics need at least 2")
    run = dataclasses.replace(config, batch_size=batch)
    data = method_data(run, split, run_stage(config))  # the run's own stage: its prepared artefacts, read back
    logs = model.evaluate(data.dataset, steps=max(1, data.steps_per_epoch), verbose=0, return_dict=True)
    # the probe's metrics need labels: never updated here, so not reported
    return {k: float(np.ravel(v)[0]) for k, v in logs.items() if not k.startswith("probe_")}


def cluster_features(features, clusters=10, seed=0, max_points=5000):
    """`(assignments [N], silhouette)`: k-means on standardised features."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = features.astype(np.float64)
    if len(x) < 3:
        raise UserError(f"clustering needs at least 3 test examples, got {len(x)}")
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    k = max(2, min(clusters, len(x) - 1))
    assignments = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    if len(np.unique(assignments)) < 2:
        return assignments, 0.0
    rng = np.random.default_rng(seed)
    sample = rng.permutation(len(x))[:max_points]
    return assignments, float(silhouette_score(x[sample], assignments[sample]))


def evaluate_unlabelled(model, encoder, dataset, config, output_dir=None, plot="tsne", clusters=10, extra=None,
                        write_report=True):
    """The label-free report of a trained model (`encoder`: the kept encoder); the
    features and the neighbour grid are the dataset's modality's; see the module docstring."""
    from keras_ssl import modalities
    from keras_ssl.evaluation.classification import embedding_plot
    from keras_ssl.evaluation.report import write_json_atomic

    modality = modalities.of_dataset(dataset)
    unit = modality.unit
    test = dataset.test
    if len(test) == 0:
        raise UserError(f"dataset {dataset.name} has no test split to evaluate on")
    results = {"dataset": dataset.name, "labelled": False, f"train_{unit}": len(dataset.train),
               f"test_{unit}": len(test)}
    results["method_metrics"] = method_test_metrics(model, config, test)
    features = modality.unlabelled_features(model, encoder, test)
    assignments, silhouette = cluster_features(features, clusters)
    results.update(feature_dim=int(features.shape[1]), kmeans_clusters=int(len(np.unique(assignments))),
                   kmeans_silhouette=silhouette)
    if extra:
        results.update(extra)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        if plot:
            names = [f"cluster {i}" for i in range(int(assignments.max()) + 1)]
            results["embedding_plot"] = embedding_plot(
                features, assignments, os.path.join(output_dir, "embedding.png"), names, method=plot,
                title=f"{plot.upper()} of the test representations, coloured by k-means cluster (no labels)")
        neighbours = modality.neighbours_plot(test, features, os.path.join(output_dir, "neighbours.png"))
        if neighbours:
            results["neighbours_plot"] = neighbours
        if write_report:
            write_json_atomic(os.path.join(output_dir, "evaluation.json"), results)
    return results


def format_unlabelled_table(results):
    """The printed summary: the method's test metrics and the clustering. Accuracies
    are percentages, as in every other table; losses and MI bounds are in nats."""
    rows = [(f"test {k}", f"{100 * v:.2f}%" if "accuracy" in k else f"{v:.4f}")
            for k, v in results["method_metrics"].items()]
    if "pretext_accuracy" in results:
        rows.append(("pretext_accuracy", f"{100 * results['pretext_accuracy']:.2f}%"))
    per_step = results.get("info_nce")
    if per_step:  # CPC: every step ahead
        for k, accuracy in enumerate(per_step["accuracy"]):
            rows.append((f"info_nce accuracy k={k + 1}", f"{100 * accuracy:.2f}%"))
        for k, bound in enumerate(per_step.get("mi_bound", ())):
            rows.append((f"info_nce MI bound k={k + 1} (nats)", f"{bound:.3f}"))
    rows += [("kmeans_clusters", str(results["kmeans_clusters"])),
             ("kmeans_silhouette", f"{results['kmeans_silhouette']:.3f}")]
    if "representation_spread" in results:
        rows.append(("representation_spread", f"{results['representation_spread']:.3f}"))
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{'metric (no labels)':<{width}} value", "-" * (width + 10)]
    return "\n".join(lines + [f"{name:<{width}} {value}" for name, value in rows])
