"""Rotation pretext task through the binaries; the export's classify signature served without keras_ssl."""

import json
import os
import subprocess
import textwrap

import numpy as np

from test_end_to_end import BLOCK_KERAS, PY, _png, _run

CLASSIFY_SCRIPT = BLOCK_KERAS + textwrap.dedent('''
    import numpy as np, tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    npz = np.load(sys.argv[2], allow_pickle=True)
    out = m.signatures["classify"](images=tf.constant(list(npz["pngs"])))
    result = {k: v.numpy().tolist() for k, v in out.items()} | {"signatures": sorted(m.signatures)}
    empty = m.signatures["classify"](images=tf.constant([], tf.string))
    result["empty"] = {k: list(v.shape) for k, v in empty.items()}
    for name, bad in {"garbage": tf.constant([b"garbage"]), "rank2": tf.constant([[b"x"]]),
                      "dtype": tf.constant([1.0])}.items():
        try:
            m.signatures["classify"](images=bad)
            result[name] = None
        except Exception as e:
            result[name] = str(e)[:1500]
    print(json.dumps(result))
''')


def test_rotation_binaries_end_to_end(tmp_path):
    from keras_ssl.data import load_source
    from keras_ssl.data.pretext import rotate_all
    from keras_ssl.saving import load_model

    model_dir = str(tmp_path / "rotation")
    _run(["keras_ssl.bin.train", "--method=rotation", "--dataset=digits", "--epochs=2", "--batch_size=64",
          "--width_multiplier=0.5", "--augment=none", "--optimizer=adam", "--learning_rate=1e-3",
          "--lr_scaling=none", "--warmup_epochs=0", "--dtype_policy=float32", f"--model_dir={model_dir}",
          "--verbose=0"], tmp_path)
    _run(["keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=none", "--layers=block1,block2"], tmp_path)
    report = json.load(open(os.path.join(model_dir, "evaluation.json")))
    assert report["pretext_accuracy"] > 0.5 and set(report["per_layer"]) == {"block1", "block2"}
    export_root = str(tmp_path / "saved_models")
    _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={export_root}"], tmp_path)

    rotated, labels = rotate_all(load_source("digits").test.images[:4])
    rotated = rotated.numpy()
    npz = str(tmp_path / "rot.npz")
    np.savez(npz, pngs=np.array([_png(i) for i in rotated], dtype=object))
    proc = subprocess.run([PY, "-c", CLASSIFY_SCRIPT, os.path.join(export_root, "rotation", "1"), npz],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["classify", "embed_pixels", "serving_default"]
    model = load_model(os.path.join(model_dir, "model.keras"))
    expected = model.rotation_probabilities(rotated.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    assert out["class"] == expected.argmax(1).tolist()
    assert out["empty"] == {"probabilities": [0, 4], "class": [0]}
    assert "not PNG/JPEG/GIF/BMP/WebP images" in out["garbage"]
    assert "not compatible with expected shape [?]" in out["rank2"] and "string" in out["dtype"]
