"""The binaries end to end on SimCLR: train, resume, evaluate, export versions, bad flags.

Every method through evaluate, export and serving is in test_method_contract.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

PY = sys.executable


def _run(args, cwd, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([PY, "-m"] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model_dir = str(root / "run")
    _run(["keras_ssl.bin.train", "--dataset=digits", "--epochs=2", "--batch_size=64", "--steps_per_epoch=3",
          "--width_multiplier=0.5", "--augment=fashion_mnist", "--dtype_policy=float32", f"--model_dir={model_dir}",
          "--verbose=0"], root)  # float32: served outputs are compared with in-memory ones to 1e-5
    return root, model_dir


def test_train_writes_run_directory(trained_run):
    _, model_dir = trained_run
    for name in ("config.json", "encoder.keras", "model.keras", "training.json"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == ["epoch_0001.weights.h5",
                                                                          "epoch_0002.weights.h5"]
    assert os.listdir(os.path.join(model_dir, "logs"))
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["dataset"] == "digits" and config["batch_size"] == 64
    training = json.load(open(os.path.join(model_dir, "training.json")))
    assert training["epochs_run"] == 2 and np.isfinite(training["final_metrics"]["loss"])


def test_resume_continues_from_latest_checkpoint(trained_run):
    root, model_dir = trained_run
    proc = _run(["keras_ssl.bin.train", "--dataset=digits", "--epochs=3", "--batch_size=64", "--steps_per_epoch=3",
                 "--width_multiplier=0.5", "--augment=fashion_mnist", "--dtype_policy=float32",
                 f"--model_dir={model_dir}", "--verbose=2"], root)
    assert "resuming from" in proc.stdout and "epoch 2" in proc.stdout
    # --verbose=2 (the flagfiles'): the start-up block, then progress lines; TF's start-up chatter filtered.
    for expected in ("keras-ssl-train: simclr", "digits: 1,437 images 8x8x1 for training, 10 classes",
                     "small_cnn x0.5", "precision float32: as asked", "1 replica(s)", "global batch 64",
                     "3 epoch(s) x 3 steps", "resuming after epoch 2", "first step done in"):
        assert expected in proc.stdout, (expected, proc.stdout)
    assert "oneDNN custom operations" not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    assert json.load(open(os.path.join(model_dir, "training.json")))["epochs_run"] == 1
    assert "epoch_0003.weights.h5" in os.listdir(os.path.join(model_dir, "checkpoints"))
    # A different config in the same directory is refused, nothing overwritten.
    proc = _run(["keras_ssl.bin.train", "--dataset=digits", "--epochs=3", "--batch_size=32",
                 f"--model_dir={model_dir}"], root, check=False)
    assert proc.returncode == 2 and "batch_size=64" in proc.stderr
    assert json.load(open(os.path.join(model_dir, "config.json")))["batch_size"] == 64


def test_evaluate_writes_report(trained_run):
    root, model_dir = trained_run
    proc = _run(["keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=pca", "--layers=block2"], root)
    assert "linear_probe_accuracy" in proc.stdout and "embedding plot:" in proc.stdout
    report = json.load(open(os.path.join(model_dir, "evaluation.json")))
    for key in ("linear_probe_accuracy", "knn_accuracy", "knn_accuracy_k200"):
        assert 0.0 <= report[key] <= 1.0
    assert report["linear_probe_accuracy"] > 0.5  # digits: 10 classes, chance is 0.1
    assert "block2" in report["per_layer"]
    assert os.path.getsize(os.path.join(model_dir, "embedding.png")) > 1000


def test_export_versions_without_overwriting(trained_run):
    # Serving every signature of every method is in test_method_contract.py; here the binary's versions.
    root, model_dir = trained_run
    export_root = str(root / "saved_models")
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}"], root)
    path = os.path.join(export_root, "run", "1")
    assert f"exported: {path}" in proc.stdout
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".")]  # no temp left
    assert json.load(open(os.path.join(path, "assets.extra", "config.json")))["method"] == "simclr"

    from keras_ssl.errors import UserError
    from keras_ssl.export import export_saved_model
    from keras_ssl.saving import load_model

    model = load_model(os.path.join(model_dir, "model.keras"))
    with pytest.raises(UserError, match="already exists"):  # an existing version is refused
        export_saved_model(model, export_root, "run", version=1, warmup=False)
    assert export_saved_model(model, export_root, "run", warmup=False).endswith(os.path.join("run", "2"))
    assert export_saved_model(model, export_root, "run", version=1, overwrite=True, warmup=False) == path
    assert sorted(os.listdir(os.path.dirname(path))) == ["1", "2"]


BAD_FLAGS = [
    (["--dataset=mnist"], 2, "error: unknown dataset 'mnist'"),
    (["--dataset=folder:/no/such/dir"], 2, "error: folder '/no/such/dir' does not exist"),
    (["--dataset=digits", "--batch_size=1"], 2, "error: batch_size must be >= 2"),
    (["--dataset=digits", "--batch_size=5000"], 2, "fewer than one batch of 5000"),
    (["--dataset=digits", "--temperature=0"], 2, "error: temperature must be > 0"),
    (["--encoder=vgg"], 2, "error: flag --encoder=vgg"),
    (["--epochs=two"], 2, "error: flag --epochs=two"),
]


@pytest.fixture(scope="module")
def bad_flag_runs(tmp_path_factory):
    """Every bad command line of BAD_FLAGS, run at once (each is mostly interpreter start-up)."""
    root = tmp_path_factory.mktemp("bad_flags")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen([PY, "-m", "keras_ssl.bin.train", f"--model_dir={root / str(i)}"] + args, cwd=root,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, (args, _, _) in enumerate(BAD_FLAGS)]
    return [(p.returncode, err) for p, (_, err) in ((p, p.communicate(timeout=600)) for p in procs)]


@pytest.mark.parametrize("case", range(len(BAD_FLAGS)), ids=[" ".join(a) for a, _, _ in BAD_FLAGS])
def test_bad_flags_fail_with_one_clear_line(bad_flag_runs, case):
    _, rc, message = BAD_FLAGS[case]
    returncode, stderr = bad_flag_runs[case]
    assert returncode == rc, stderr[-2000:]
    assert message in stderr
    assert "Traceback" not in stderr


def test_evaluate_and_export_on_missing_run_fail_clearly(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen([PY, "-m", binary, f"--model_dir={tmp_path}"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for binary in ("keras_ssl.bin.evaluate", "keras_ssl.bin.export")]  # at once: mostly start-up
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 2 and "holds no training run" in stderr
        assert "Traceback" not in stderr


def test_train_binary_on_two_cpu_replicas(tmp_path):
    model_dir = str(tmp_path / "mirrored")
    _run(["keras_ssl.bin.train", "--dataset=digits", "--epochs=1", "--batch_size=64", "--steps_per_epoch=2",
          "--width_multiplier=0.5", "--strategy=mirrored", "--cpu_replicas=2", f"--model_dir={model_dir}",
          "--verbose=0"], tmp_path)
    training = json.load(open(os.path.join(model_dir, "training.json")))
    assert training["replicas"] == 2 and np.isfinite(training["final_metrics"]["loss"])


def test_console_script_helpshort_lists_the_binary_flags(tmp_path):
    # absl's --helpshort looks at the console script's wrapper module, which defines no flags
    script = os.path.join(os.path.dirname(PY), "keras-ssl-export")
    if not os.path.exists(script):
        pytest.skip("keras_ssl is not installed as a package (no console scripts)")
    proc = subprocess.run([script, "--helpshort"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert "keras-ssl-export: " in proc.stdout and "--model_dir:" in proc.stdout and "--export_root" in proc.stdout
