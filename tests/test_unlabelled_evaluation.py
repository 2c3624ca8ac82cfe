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


def test_unlabelled_audio_run_is_evaluated_without_labels(tmp_path):
    """A flat folder of WAVs (no word folders, no speakers.csv): CPC's InfoNCE, its test loss,
    clusters and the plot, instead of the word probe's refusal."""
    import glob
    import shutil

    from keras_ssl.training import train
    from tests.helpers import smoke_config, write_chirp_folder

    write_chirp_folder(str(tmp_path / "chirps"), per_class=16)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(glob.glob(str(tmp_path / "chirps" / "*" / "*" / "*.wav")))):
        shutil.copy(path, flat / f"{i:03d}.wav")
    model_dir = str(tmp_path / "run")
    train(smoke_config("cpc_audio", tmp_path, dataset=f"folder:{flat}", epochs=1, steps_per_epoch=3,
                       dtype_policy="float32", verbose=0, model_dir=model_dir))
    proc = subprocess.run([sys.executable, "-m", "keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=pca"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(os.path.join(model_dir, "evaluation.json")))
    assert report["labelled"] is False and report["test_clips"] == 5  # 10% of 48 clips
    assert set(report["method_metrics"]) == {"loss", "accuracy", "mi_bound"}
    assert len(report["info_nce"]["accuracy"]) == 4 and os.path.getsize(report["info_nce_plot"]) > 1000
    assert 2 <= report["kmeans_clusters"] <= 10 and os.path.getsize(report["embedding_plot"]) > 1000
    assert "info_nce accuracy k=1" in proc.stdout and "kmeans_silhouette" in proc.stdout
    assert "linear_probe_accuracy" not in report and "probes" not in report
