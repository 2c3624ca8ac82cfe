"""Siamese through the binaries: train -> evaluate (verification, one-shot) -> export -> verify
served in a process without keras_ssl, with the same decisions as the in-memory model."""

import json
import os
import subprocess
import textwrap

import numpy as np
import pytest

from test_end_to_end import BLOCK_KERAS, PY, _png, _run

VERIFY_SCRIPT = BLOCK_KERAS + textwrap.dedent('''
    import numpy as np, tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    npz = np.load(sys.argv[2], allow_pickle=True)
    out = m.signatures["verify"](images_a=tf.constant(list(npz["a"])), images_b=tf.constant(list(npz["b"])))
    print(json.dumps({k: v.numpy().tolist() for k, v in out.items()} | {"threshold": float(m.threshold[0])}))
''')


@pytest.fixture(scope="module")
def siamese_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("siamese")
    model_dir = str(root / "siamese")
    _run(["keras_ssl.bin.train", "--method=siamese", "--dataset=digits", "--epochs=3", "--batch_size=64",
          "--width_multiplier=0.5", "--augment=none", "--optimizer=adam", "--learning_rate=3e-3",
          "--lr_scaling=none", "--warmup_epochs=0", "--normalize_embeddings", "--embedding_dim=16",
          "--train_classes=0-6", "--val_fraction=0.2", "--dtype_policy=float32", f"--model_dir={model_dir}",
          "--verbose=0"], root)
    return root, model_dir


def test_evaluate_reports_verification_and_one_shot(siamese_run):
    root, model_dir = siamese_run
    proc = _run(["keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=none"], root)
    assert "roc plot:" in proc.stdout
    report = json.load(open(os.path.join(model_dir, "evaluation.json")))
    for key in ("roc_auc", "eer", "threshold", "verification_accuracy", "linear_probe_accuracy", "knn_accuracy"):
        assert key in report, key
    assert report["roc_auc"] > 0.8 and 0.0 <= report["eer"] < 0.3
    assert set(report["one_shot_accuracy"]) == {"10", "3_heldout"}
    assert report["one_shot_accuracy"]["10"] > 0.3  # chance 0.1
    assert os.path.getsize(os.path.join(model_dir, "roc.png")) > 1000


def test_export_verify_matches_in_memory_model(siamese_run):
    import tensorflow as tf

    from keras_ssl.data import load_source
    from keras_ssl.saving import load_model

    root, model_dir = siamese_run
    if not os.path.isfile(os.path.join(model_dir, "evaluation.json")):
        _run(["keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=none"], root)
    calibrated = json.load(open(os.path.join(model_dir, "evaluation.json")))["threshold"]
    export_root = str(root / "saved_models")
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}"], root)
    assert "from evaluation.json (calibrated)" in proc.stdout
    path = os.path.join(export_root, "siamese", "1")

    test = load_source("digits").test
    rng = np.random.default_rng(0)
    a_idx, b_idx = rng.integers(0, len(test), 64), rng.integers(0, len(test), 64)
    npz = str(root / "pairs.npz")
    np.savez(npz, a=np.array([_png(test.images[i]) for i in a_idx], dtype=object),
             b=np.array([_png(test.images[i]) for i in b_idx], dtype=object))
    proc = subprocess.run([PY, "-c", VERIFY_SCRIPT, path, npz], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["threshold"] == pytest.approx(calibrated)

    model = load_model(os.path.join(model_dir, "model.keras"))
    e_a = model.embed(test.images[a_idx].astype(np.float32) / 255.0)
    e_b = model.embed(test.images[b_idx].astype(np.float32) / 255.0)
    distance = model.pair_score(e_a, e_b).numpy()
    np.testing.assert_allclose(served["distance"], distance, atol=1e-5)
    expected_same = distance < calibrated
    near = np.abs(distance - calibrated) < 1e-5  # float ties at the threshold may flip
    assert np.array_equal(np.array(served["same"])[~near], expected_same[~near])
    assert 0 < np.mean(served["same"]) < 1

    # override at export time; a non-number is refused by the flag parser
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}",
                 "--threshold=0.25"], root)
    assert "verify threshold: 0.2500 from --threshold" in proc.stdout
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}",
                 "--threshold=high"], root, check=False)
    assert proc.returncode != 0 and "--threshold" in proc.stderr and "Traceback" not in proc.stderr
    del tf
