"""keras-ssl-evaluate on an unlabelled dataset: what needs no labels, instead of a refusal."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image


def test_unlabelled_run_is_evaluated_without_labels(tmp_path):
    from keras_ssl.data import load_source
    from keras_ssl.training import TrainConfig, train

    images = load_source("digits").train.images[:150]
    folder = tmp_path / "flat"
    folder.mkdir()
    for i, image in enumerate(images):  # a flat folder: no class sub-folders, no labels
        Image.fromarray(image[:, :, 0]).resize((16, 16)).save(folder / f"{i:03d}.png")
    model_dir = str(tmp_path / "run")
    train(TrainConfig(method="rotation", dataset=f"folder:{folder}", augment="none", width_multiplier=0.25,
                      batch_size=16, epochs=1, steps_per_epoch=3, dtype_policy="float32", verbose=0,
                      model_dir=model_dir))
    proc = subprocess.run([sys.executable, "-m", "keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=pca"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(os.path.join(model_dir, "evaluation.json")))
    assert report["labelled"] is False and report["test_images"] == 15
    # the method's own metrics on the test split, its pretext accuracy, clusters
    assert set(report["method_metrics"]) == {"loss", "rotation_accuracy"}
    assert np.isfinite(report["method_metrics"]["loss"]) and 0 <= report["pretext_accuracy"] <= 1
    assert 2 <= report["kmeans_clusters"] <= 10 and -1 <= report["kmeans_silhouette"] <= 1
    for key in ("embedding_plot", "neighbours_plot"):
        assert os.path.getsize(report[key]) > 1000, key
    assert "test rotation_accuracy" in proc.stdout and "kmeans_silhouette" in proc.stdout
    assert "linear_probe_accuracy" not in report
