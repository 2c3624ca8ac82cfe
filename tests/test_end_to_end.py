"""The binaries end to end: train -> evaluate -> export -> serve in a process without keras_ssl."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

PY = sys.executable

# Prepended to scripts run in a fresh interpreter where importing keras_ssl (or keras) fails.
BLOCK_KERAS = textwrap.dedent('''
    import importlib.abc, importlib.util, json, sys
    class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("keras_ssl", "keras"):
                return importlib.util.spec_from_loader(name, self)  # no origin: "not installed"
        def create_module(self, spec):
            raise ImportError("blocked: " + spec.name)
        def exec_module(self, module):
            raise ImportError("blocked")
    sys.meta_path.insert(0, Block())
''')

SERVE_SCRIPT = BLOCK_KERAS + textwrap.dedent('''
    import numpy as np, tensorflow as tf
    path, npz = sys.argv[1], np.load(sys.argv[2], allow_pickle=True)
    m = tf.saved_model.load(path)
    out = {"signatures": sorted(m.signatures.keys())}
    out["pixels"] = m.signatures["embed_pixels"](pixels=tf.constant(npz["pixels"]))["embedding"].numpy().tolist()
    out["bytes"] = m.signatures["serving_default"](images=tf.constant(list(npz["pngs"])))["embedding"].numpy().tolist()
    out["resized"] = m.signatures["embed_pixels"](pixels=tf.constant(npz["big"]))["embedding"].numpy().tolist()
    out["empty"] = list(m.signatures["embed_pixels"](pixels=tf.zeros([0, 8, 8, 1], tf.uint8))["embedding"].shape)
    out["empty_bytes"] = list(m.signatures["serving_default"](images=tf.constant([], tf.string))["embedding"].shape)
    if "classify" in m.signatures and "images" in m.signatures["classify"].structured_input_signature[1]:
        c = m.signatures["classify"](images=tf.constant(list(npz["pngs"])))
        out["classify"] = {"probabilities": c["probabilities"].numpy().tolist(), "class": c["class"].numpy().tolist()}
    bad = {
        "rank3": lambda: m.signatures["embed_pixels"](pixels=tf.zeros([8, 8, 1], tf.uint8)),
        "channels": lambda: m.signatures["embed_pixels"](pixels=tf.zeros([2, 8, 8, 3], tf.uint8)),
        "dtype": lambda: m.signatures["embed_pixels"](pixels=tf.zeros([2, 8, 8, 1], tf.float32)),
        "garbage": lambda: m.signatures["serving_default"](images=tf.constant([npz["pngs"][0], b"garbage!"])),
        "zero_size": lambda: m.signatures["embed_pixels"](pixels=tf.zeros([1, 0, 8, 1], tf.uint8)),
    }
    out["errors"] = {}
    for name, call in bad.items():
        try:
            call()
            out["errors"][name] = None
        except Exception as e:
            out["errors"][name] = type(e).__name__ + ": " + str(e)[:2000]
    out["keras_loaded"] = "keras" in sys.modules or "keras_ssl" in sys.modules
    print(json.dumps(out))
''')


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
                 f"--model_dir={model_dir}", "--verbose=0"], root)
    assert "resuming from" in proc.stdout and "epoch 2" in proc.stdout
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


def _png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="PNG")
    return buf.getvalue()


def test_export_serves_without_keras_ssl(trained_run):
    import keras
    import tensorflow as tf

    from keras_ssl.data import load_source

    root, model_dir = trained_run
    export_root = str(root / "saved_models")
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}"], root)
    path = os.path.join(export_root, "run", "1")
    assert f"exported: {path}" in proc.stdout
    assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".")]  # no temp left
    assert os.path.isfile(os.path.join(path, "assets.extra", "config.json"))

    images = load_source("digits").test.images[:6]
    big = tf.cast(tf.image.resize(tf.cast(images, tf.float32), (16, 16)), tf.uint8).numpy()
    npz = str(root / "inputs.npz")
    np.savez(npz, pixels=images, pngs=np.array([_png(i) for i in images], dtype=object), big=big)
    proc = subprocess.run([PY, "-c", SERVE_SCRIPT, path, npz], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["keras_loaded"]
    assert out["signatures"] == ["classify", "embed_pixels", "serving_default"]  # classify: the online probe

    from keras_ssl.saving import load_model

    model = load_model(os.path.join(model_dir, "model.keras"))
    probs = tf.nn.softmax(tf.cast(model.probe(model.encoder(images.astype(np.float32) / 255.0)), tf.float32)).numpy()
    np.testing.assert_allclose(out["classify"]["probabilities"], probs, atol=1e-4)
    assert out["classify"]["class"] == probs.argmax(1).tolist()
    facts = json.load(open(os.path.join(path, "assets.extra", "preprocessing.json")))
    assert facts["class_names"] == [str(i) for i in range(10)]  # digits

    encoder = keras.models.load_model(os.path.join(model_dir, "encoder.keras"))
    expected = tf.math.l2_normalize(encoder(images.astype(np.float32) / 255.0, training=False), -1).numpy()
    np.testing.assert_allclose(out["pixels"], expected, atol=1e-5)
    np.testing.assert_allclose(out["bytes"], expected, atol=1e-5)
    assert np.asarray(out["resized"]).shape == expected.shape
    assert out["empty"] == [0, expected.shape[1]] and out["empty_bytes"] == [0, expected.shape[1]]
    errors = out["errors"]
    assert "pixels [8,8,1] is not compatible with expected shape [?,?,?,1]" in errors["rank3"]
    assert errors["channels"] and "[?,?,?,1]" in errors["channels"].replace(" ", "")
    assert errors["dtype"] and "uint8" in errors["dtype"]
    assert "not PNG/JPEG/GIF/BMP/WebP" in errors["garbage"]
    assert "height and width" in errors["zero_size"]

    # Existing version refused; the next free version is picked without --version.
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}",
                 "--version=1"], root, check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}"], root)
    assert proc.stdout.strip().endswith(os.path.join("run", "2"))


@pytest.mark.parametrize("args, rc, message", [
    (["--dataset=mnist"], 2, "error: unknown dataset 'mnist'"),
    (["--dataset=folder:/no/such/dir"], 2, "error: folder '/no/such/dir' does not exist"),
    (["--dataset=digits", "--batch_size=1"], 2, "error: batch_size must be >= 2"),
    (["--dataset=digits", "--batch_size=5000"], 2, "fewer than one batch of 5000"),
    (["--dataset=digits", "--temperature=0"], 2, "error: temperature must be > 0"),
    (["--encoder=vgg"], 1, "--encoder"),
    (["--epochs=two"], 1, "--epochs"),
])
def test_bad_flags_fail_with_one_clear_line(tmp_path, args, rc, message):
    proc = _run(["keras_ssl.bin.train", f"--model_dir={tmp_path / 'run'}"] + args, tmp_path, check=False)
    assert proc.returncode == rc, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_and_export_on_missing_run_fail_clearly(tmp_path):
    for binary in ("keras_ssl.bin.evaluate", "keras_ssl.bin.export"):
        proc = _run([binary, f"--model_dir={tmp_path}"], tmp_path, check=False)
        assert proc.returncode == 2 and "holds no training run" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_train_binary_on_two_cpu_replicas(tmp_path):
    model_dir = str(tmp_path / "mirrored")
    _run(["keras_ssl.bin.train", "--dataset=digits", "--epochs=1", "--batch_size=64", "--steps_per_epoch=2",
          "--width_multiplier=0.5", "--strategy=mirrored", "--cpu_replicas=2", f"--model_dir={model_dir}",
          "--verbose=0"], tmp_path)
    training = json.load(open(os.path.join(model_dir, "training.json")))
    assert training["replicas"] == 2 and np.isfinite(training["final_metrics"]["loss"])
