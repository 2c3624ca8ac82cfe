"""Triplet (online mining) through the binaries: train -> retrieval evaluation -> export -> serve."""

import json
import os
import subprocess
import textwrap

import numpy as np

from test_end_to_end import BLOCK_KERAS, PY, SERVE_SCRIPT, _png, _run


def test_triplet_binaries_end_to_end(tmp_path):
    import tensorflow as tf

    from keras_ssl.data import load_source
    from keras_ssl.saving import load_model

    model_dir = str(tmp_path / "triplet")
    _run(["keras_ssl.bin.train", "--method=triplet", "--dataset=digits", "--epochs=2", "--classes_per_batch=4",
          "--images_per_class=4", "--embedding_dim=16", "--width_multiplier=0.5", "--augment=none",
          "--optimizer=adam", "--learning_rate=1e-3", "--lr_scaling=none", "--warmup_epochs=0",
          "--train_classes=0-6", "--dtype_policy=float32", f"--model_dir={model_dir}", "--verbose=0"], tmp_path)
    proc = _run(["keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=none"], tmp_path)
    assert "retrieval plot:" in proc.stdout
    report = json.load(open(os.path.join(model_dir, "evaluation.json")))
    for key in ("precision_at_1", "r_precision", "map_at_r", "recall_at_k", "heldout_retrieval", "roc_auc", "eer",
                "threshold", "one_shot_accuracy"):
        assert key in report, key
    assert report["precision_at_1"] > 0.5 and set(report["recall_at_k"]) == {"1", "5", "10"}

    export_root = str(tmp_path / "saved_models")
    _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}"], tmp_path)
    path = os.path.join(export_root, "triplet", "1")
    images = load_source("digits").test.images[:6]
    big = tf.cast(tf.image.resize(tf.cast(images, tf.float32), (16, 16)), tf.uint8).numpy()
    npz = str(tmp_path / "inputs.npz")
    np.savez(npz, pixels=images, pngs=np.array([_png(i) for i in images], dtype=object), big=big)
    proc = subprocess.run([PY, "-c", SERVE_SCRIPT, path, npz], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    model = load_model(os.path.join(model_dir, "model.keras"))
    expected = model.embed(images.astype(np.float32) / 255.0).numpy()  # L2-normalised 16-d
    assert expected.shape == (6, 16)
    np.testing.assert_allclose(out["bytes"], expected, atol=1e-5)
    np.testing.assert_allclose(out["pixels"], expected, atol=1e-5)
    assert "verify" in out["signatures"]  # at the threshold keras-ssl-evaluate calibrated

    # --threshold overrides the calibrated one; verify: Euclidean distance of the embeddings, same when below.
    _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}", "--threshold=0.9"],
         tmp_path)
    verify = BLOCK_KERAS + textwrap.dedent('''
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        pngs = list(np.load(sys.argv[2], allow_pickle=True)["pngs"])
        out = m.signatures["verify"](images_a=tf.constant(pngs), images_b=tf.constant(pngs[::-1]))
        print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
    ''')
    proc = subprocess.run([PY, "-c", verify, os.path.join(export_root, "triplet", "2"), npz], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    distance = np.linalg.norm(expected - expected[::-1], axis=1)
    np.testing.assert_allclose(out["distance"], distance, atol=1e-5)
    assert out["same"] == (distance < 0.9).tolist()
