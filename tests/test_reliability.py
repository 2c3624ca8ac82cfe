"""Faults a demanding user meets (issue 13): a diverged run never checkpointed, evaluated or
exported; a collapsed model refused; the run directory locked, known by any spelling of its
path, and cleaned of a killed run's temporary files."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_ssl.errors import UserError
from keras_ssl.training import TrainConfig, run_directory_lock, train

SIAMESE = dict(method="siamese", dataset="digits", width_multiplier=0.25, batch_size=16, steps_per_epoch=2,
               optimizer="adam", learning_rate=1e-3, lr_scaling="none", warmup_epochs=0.0, augment="none",
               embedding_dim=8, dtype_policy="float32", verbose=0)


def _checkpoints(model_dir):
    return sorted(os.listdir(os.path.join(model_dir, "checkpoints")))


def test_a_diverged_epoch_is_never_saved_and_a_lower_rate_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    train(TrainConfig.from_dict(dict(SIAMESE, model_dir=model_dir, epochs=1)))
    assert _checkpoints(model_dir) == ["epoch_0001.weights.h5"]
    encoder_written = os.path.getmtime(os.path.join(model_dir, "encoder.keras"))
    # Adam's step is about the learning rate whatever the gradient: 1e30 overflows float32 at once.
    with pytest.raises(UserError, match=r"training diverged in epoch 2 .*the last good checkpoint, epoch 1, is kept"):
        train(TrainConfig.from_dict(dict(SIAMESE, model_dir=model_dir, epochs=4, learning_rate=1e30)))
    assert _checkpoints(model_dir) == ["epoch_0001.weights.h5"]  # nothing of the bad epochs
    assert os.path.getmtime(os.path.join(model_dir, "encoder.keras")) == encoder_written  # the good one stays
    result = train(TrainConfig.from_dict(dict(SIAMESE, model_dir=model_dir, epochs=2)))  # lower rate: resumes
    assert result["epochs_run"] == 1 and np.isfinite(result["final_metrics"]["loss"])
    assert _checkpoints(model_dir) == ["epoch_0001.weights.h5", "epoch_0002.weights.h5"]
    assert not os.path.exists(os.path.join(model_dir, "diverged.json"))  # the rerun went through

    # A run that diverges in its first epoch has no encoder: evaluate/export name the cause.
    from keras_ssl.bin.common import load_run

    first = str(tmp_path / "first")
    with pytest.raises(UserError, match="training diverged in epoch 1"):
        train(TrainConfig.from_dict(dict(SIAMESE, model_dir=first, epochs=1, learning_rate=1e30)))
    with pytest.raises(UserError, match=r"stopped: training diverged in epoch 1 \(.*nothing was saved"):
        load_run(first)


def test_run_directory_is_locked_known_by_any_spelling_and_cleaned(tmp_path):
    model_dir = str(tmp_path / "run")
    config = dict(SIAMESE, model_dir=model_dir, epochs=1)
    train(TrainConfig.from_dict(config))
    with run_directory_lock(model_dir):  # as a second keras-ssl-train would find it
        with pytest.raises(UserError, match="is in use by a running keras-ssl-train"):
            train(TrainConfig.from_dict(dict(config, epochs=2)))
    # What a killed run leaves: temporary checkpoint, model and JSON files.
    stale = [os.path.join(model_dir, "checkpoints", ".tmp-99999.weights.h5"),
             os.path.join(model_dir, "encoder.tmp-99999.keras"), os.path.join(model_dir, "training.json.tmp-99999")]
    for path in stale:
        open(path, "w").close()
    other_spelling = os.path.join(str(tmp_path), ".", "run") + "/"
    result = train(TrainConfig.from_dict(dict(config, model_dir=other_spelling, epochs=2)))
    assert result["epochs_run"] == 1  # resumed, not refused as another run
    assert not any(os.path.exists(p) for p in stale)


def test_health_checks_name_the_fault():
    from keras_ssl.health import check_representation, nonfinite_variables, representation_spread

    rng = np.random.default_rng(0)
    spread_even = representation_spread(rng.normal(size=(2000, 64)))
    assert 0.9 / 8 < spread_even < 1.1 / 8  # about 1/sqrt(64)
    assert representation_spread(np.ones((10, 64)) + 1e-6 * rng.normal(size=(10, 64))) < 1e-5
    check_representation(rng.normal(size=(100, 16)), "x")
    with pytest.raises(UserError, match="has collapsed"):
        check_representation(np.ones((100, 16)) + 1e-4 * rng.normal(size=(100, 16)), "x")
    with pytest.raises(UserError, match="NaN/Inf features"):
        check_representation(np.full((4, 16), np.nan), "x")

    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    assert nonfinite_variables(model) == []
    model.layers[1].moving_variance.assign([np.inf, 1.0])
    assert nonfinite_variables(model) == [(model.layers[1].moving_variance.path, 1)]


def test_diverged_or_collapsed_models_are_refused_by_evaluate_and_export(tmp_path):
    from keras_ssl.export import export_saved_model
    from keras_ssl.saving import load_model

    model_dir = str(tmp_path / "run")
    train(TrainConfig.from_dict(dict(SIAMESE, model_dir=model_dir, epochs=1)))
    path = os.path.join(model_dir, "model.keras")
    model = load_model(path)
    head = model.embedding_head.layers[-1]  # every image -> the head's bias: a collapsed embedding
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    head.bias.assign(np.arange(8, dtype="float32"))
    model.save(path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    commands = [["keras_ssl.bin.evaluate", f"--model_dir={model_dir}"],
                ["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={tmp_path / 'exports'}"]]
    procs = [subprocess.Popen([sys.executable, "-m", *command], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for command in commands]  # at once: mostly start-up
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 2, stderr[-2000:]
        assert "has collapsed" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert not os.path.exists(os.path.join(model_dir, "evaluation.json"))
    assert not os.path.exists(tmp_path / "exports" / "run")

    conv = next(layer for layer in model.encoder.layers if hasattr(layer, "kernel"))
    conv.kernel.assign(np.full(conv.kernel.shape, np.nan, "float32"))
    with pytest.raises(UserError, match=r"has diverged: .*NaN/Inf \(or \|w\| > 1e\+06\) values"):
        export_saved_model(model, str(tmp_path / "exports"), "nan", warmup=False)
    assert not os.path.exists(tmp_path / "exports" / "nan")
    # finite but exploded (plain SGD at a learning rate of 1e6 reached 1e17 without an Inf)
    conv.kernel.assign(np.full(conv.kernel.shape, 1e17, "float32"))
    with pytest.raises(UserError, match="has diverged"):
        export_saved_model(model, str(tmp_path / "exports"), "huge", warmup=False)
    assert not os.path.exists(tmp_path / "exports" / "huge")


def test_a_bad_flag_is_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "keras_ssl.bin.export", "--model_dir=x", "--version=one"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error: flag --version=one" in proc.stderr and "FATAL" not in proc.stderr


def test_environment_faults_are_one_error_line(tmp_path):
    import shutil

    model_dir = str(tmp_path / "run")
    train(TrainConfig.from_dict(dict(SIAMESE, model_dir=model_dir, epochs=1)))
    a_file = tmp_path / "a_file"
    a_file.write_text("in the way")
    empty_config, truncated = str(tmp_path / "empty_config"), str(tmp_path / "truncated")
    shutil.copytree(model_dir, empty_config)
    open(os.path.join(empty_config, "config.json"), "w").close()
    shutil.copytree(model_dir, truncated)
    with open(os.path.join(truncated, "encoder.keras"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(truncated, "encoder.keras")) // 2)
    cases = {
        "train: model_dir is a file": (["keras_ssl.bin.train", "--dataset=digits", f"--model_dir={a_file}"],
                                       "cannot create the run directory"),
        "export: export_root is a file": (["keras_ssl.bin.export", f"--model_dir={model_dir}",
                                           f"--export_root={a_file}"], "cannot write in"),
        "evaluate: empty config.json": (["keras_ssl.bin.evaluate", f"--model_dir={empty_config}"], "is damaged"),
        "evaluate: truncated encoder.keras": (["keras_ssl.bin.evaluate", f"--model_dir={truncated}"],
                                              "encoder.keras cannot be read"),
        "evaluate: a grid reading without its grid": (["keras_ssl.bin.evaluate", f"--model_dir={model_dir}",
                                                       "--grid_reading=block2"], "e.g. block2:grid3"),
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = {name: subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and cases[name][1] in errors[0], (name, stderr[-2000:])
        assert "Traceback" not in stderr, (name, stderr[-2000:])


def test_a_full_disk_stops_training_before_the_checkpoint_write(tmp_path, monkeypatch):
    import shutil

    model_dir = str(tmp_path / "run")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1 << 20))  # 1 MB left
    with pytest.raises(UserError, match=r"no space for the epoch 1 checkpoint .* MB needed, 1 MB free"):
        train(TrainConfig.from_dict(dict(SIAMESE, model_dir=model_dir, epochs=1)))
    assert os.listdir(os.path.join(model_dir, "checkpoints")) == []  # no partial file
