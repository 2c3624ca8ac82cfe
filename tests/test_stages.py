"""Runs as stages (keras_ssl.stages): a method that continues a finished parent run, with
artefacts prepared once and reused on resume; every wrong --parent_run is one error line.
The two-stage toy (`toy_cluster_targets`, parent `rotation`) is in tests/toy_methods.py;
the contract test holds it to every other check."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_ssl.errors import UserError
from keras_ssl.training import TrainConfig, train
from tests.helpers import SMOKE_RUN, smoke_parent_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def parent_root(tmp_path_factory):
    return tmp_path_factory.mktemp("parents")


def _child(model_dir, parent_run, **extra):
    return TrainConfig.from_dict({"method": "toy_cluster_targets", "dataset": "digits", "model_dir": str(model_dir),
                                  "parent_run": parent_run, "augment": "none", "batch_size": 16, **SMOKE_RUN,
                                  **extra})


def test_a_stage_prepares_once_and_resumes_on_the_same_artefacts(parent_root, tmp_path):
    parent = smoke_parent_run("rotation", parent_root)
    model_dir = tmp_path / "child"
    first = train(_child(model_dir, parent))
    prepared = model_dir / "prepared.npz"
    assert first["epochs_run"] == 1 and prepared.is_file()
    with np.load(prepared) as stored:
        targets, centroids = stored["targets"], stored["centroids"]
    assert centroids.shape[0] == 4 and set(np.unique(targets)) == {0, 1, 2, 3}  # every cluster is a target
    assert json.load(open(model_dir / "config.json"))["parent_run"] == parent
    written = os.path.getmtime(prepared)
    resumed = train(_child(model_dir, parent, epochs=2))
    assert resumed["epochs_run"] == 1 and os.path.getmtime(prepared) == written  # read back, not made again
    assert np.isfinite(resumed["final_metrics"]["loss"])
    # a rerun of the finished parent trains nothing and leaves its model.keras alone
    parent_model = os.path.join(parent, "model.keras")
    before = os.stat(parent_model).st_mtime_ns
    again = train(TrainConfig.from_dict({**json.load(open(os.path.join(parent, "config.json"))), "verbose": 0}))
    assert again["epochs_run"] == 0 and os.stat(parent_model).st_mtime_ns == before
    # a parent retrained since: the stage's artefacts no longer match, and it has trained on them
    retrained = shutil.copytree(parent, tmp_path / "retrained_parent")
    resumed_dir = shutil.copytree(model_dir, tmp_path / "child_of_retrained")
    config = json.load(open(resumed_dir / "config.json"))
    (resumed_dir / "config.json").write_text(json.dumps({**config, "parent_run": str(retrained),
                                                         "model_dir": str(resumed_dir)}))
    os.utime(retrained / "model.keras", ns=(before + 10**9, before + 10**9))
    with pytest.raises(UserError, match="trained on artefacts prepared from another state of its parent"):
        train(_child(resumed_dir, str(retrained), epochs=3))
    # a different parent for the same directory is another run: refused like any other change
    other = shutil.copytree(parent, tmp_path / "other_parent")
    with pytest.raises(UserError, match=r"holds a run with parent_run="):
        train(_child(model_dir, str(other), epochs=3))


def test_every_wrong_parent_run_is_refused_in_one_line(parent_root, tmp_path):
    rotation = smoke_parent_run("rotation", parent_root)
    siamese = smoke_parent_run("siamese", parent_root)
    unfinished = shutil.copytree(rotation, tmp_path / "unfinished")
    os.remove(unfinished / "model.keras")
    diverged = shutil.copytree(rotation, tmp_path / "diverged")
    (diverged / "diverged.json").write_text(json.dumps({"message": "training diverged in epoch 1 (loss=nan)"}))
    cases = {
        None: "method toy_cluster_targets continues a finished rotation run: pass --parent_run=DIR",
        str(tmp_path / "missing"): "is not a directory",
        str(tmp_path): r"holds no training run \(no config.json\)",
        siamese: "is a siamese run; method toy_cluster_targets continues a rotation run",
        str(unfinished): r"has not finished training \(no model.keras\)",
        str(diverged): r"stopped: training diverged in epoch 1 \(loss=nan\); finish that run first",
    }
    for given, message in cases.items():
        with pytest.raises(UserError, match=message):
            train(_child(tmp_path / "child", given))
        assert not (tmp_path / "child" / "config.json").exists()  # a refused start claims nothing
    with pytest.raises(UserError, match="--parent_run does not apply to method rotation"):
        train(TrainConfig.from_dict({"method": "rotation", "dataset": "digits", "model_dir": str(tmp_path / "r"),
                                     "parent_run": rotation, "augment": "none", **SMOKE_RUN}))


def test_the_binary_documents_and_refuses_parent_run(parent_root, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    siamese = smoke_parent_run("siamese", parent_root)
    proc = subprocess.run([sys.executable, "-m", "tests.run_binary", "keras_ssl.bin.train",
                           "--method=toy_cluster_targets", "--dataset=digits", f"--parent_run={siamese}",
                           f"--model_dir={tmp_path / 'child'}"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"error: --parent_run={siamese} is a siamese run; method "
                                                    "toy_cluster_targets continues a rotation run")
    helpfull = subprocess.run([sys.executable, "-m", "keras_ssl.bin.train", "--helpfull"], capture_output=True,
                              text=True, timeout=300, env=env)
    assert helpfull.returncode == 0 and "--parent_run: a stage's parent" in helpfull.stdout


def test_artefacts_made_for_other_settings_are_made_again(parent_root, tmp_path):
    parent = smoke_parent_run("rotation", parent_root)
    model_dir = tmp_path / "child"
    train(_child(model_dir, parent))
    for entry in os.listdir(model_dir):  # as a start refused after prepare leaves it: the artefacts alone
        if entry != "prepared.npz":
            shutil.rmtree(model_dir / entry) if (model_dir / entry).is_dir() else os.remove(model_dir / entry)
    train(_child(model_dir, parent, clusters=3))
    with np.load(model_dir / "prepared.npz") as stored:
        assert stored["centroids"].shape[0] == 3  # made again for 3 clusters, not the 4 left behind


def test_a_method_written_before_stages_is_called_without_one():
    from keras_ssl.stages import no_stage
    from keras_ssl.run_setup import _with_stage

    assert _with_stage(lambda run, options, encoder, dataset: "old", no_stage(), 1, 2, 3, 4) == "old"
    assert _with_stage(lambda run, options, encoder, dataset, stage: stage, no_stage(), 1, 2, 3, 4) == no_stage()
    assert no_stage() is not no_stage()  # nothing shared between runs


def test_generative_outputs_saturate_and_latents_need_a_shape():
    import tensorflow as tf

    from keras_ssl.export import _as_declared
    from keras_ssl.models.endpoints import ServingInput

    assert _as_declared(tf.constant([300.0, -1.0, 12.6]), "uint8").numpy().tolist() == [255, 0, 13]
    assert _as_declared(tf.constant([b"a"]), "string").numpy().tolist() == [b"a"]
    with pytest.raises(ValueError, match=r"the latent input 'z' needs its shape"):
        ServingInput("z", "latent")
    assert ServingInput("z", "latent", shape=(8,)).shape == (8,)
