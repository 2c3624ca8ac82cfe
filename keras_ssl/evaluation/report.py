"""Writing and printing evaluation results."""

import json
import os


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
        if key == "knn_accuracy" and results.get("knn_accuracy_k20") == value:
            continue  # the same figure as knn_accuracy_k20 (kept in the JSON for compatibility)
        if isinstance(value, dict) and key in ("one_shot_accuracy", "encoder_one_shot_accuracy",
                                                  "grid_one_shot_accuracy"):
            rows += [(f"{key}[{n.replace('_heldout', '')}-way{', held-out' if 'held' in n else ''}]",
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
        elif key == "train_index_retrieval":  # test queries, the training split as the index
            rows += [(f"test_vs_train/{k}", f"{100 * value[k]:.2f}%") for k in ("precision_at_1", "map_at_r")]
        elif key == "grid_reading":  # which map and grid the grid_* rows read
            rows.append((key, value))
        elif key == "threshold":
            rows.append((f"threshold ({results.get('threshold_units', '')})", f"{value:.4f}"))
    for layer, scores in sorted(results.get("per_layer", {}).items()):
        for key in sorted(scores):
            if key == "knn_accuracy" and scores.get("knn_accuracy_k20") == scores[key]:
                continue  # as above
            if "accuracy" in key:
                rows.append((f"{layer}/{key}", f"{100 * scores[key]:.2f}%"))
    return layout(rows)


def layout(rows):
    """`[(name, value text), ...]` (the first the header) as the printed table: names left-aligned,
    values right-aligned in a column as wide as the widest (at least 8), a rule under the header."""
    width, value_width = max(len(r[0]) for r in rows), max(8, *(len(r[1]) for r in rows))
    lines = [f"{a:<{width}}  {b:>{value_width}}" for a, b in rows]
    lines.insert(1, "-" * (width + 2 + value_width))
    return "\n".join(lines)
