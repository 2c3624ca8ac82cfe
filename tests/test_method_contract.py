"""The contract every registered method keeps (issue 12), on tiny data.

For each method in the registry, with its own `smoke_options`: the config
round-trips through its flat form and `config.json`; `train()` runs and a
rerun resumes; `model.keras` loads and predicts what the model predicted;
`keras-ssl-evaluate` runs the evaluations the method declares;
`keras-ssl-export` writes every endpoint the model declares; a fresh process
that cannot import keras or keras_ssl calls every signature, on good input
(the served representation equals `model.predict`, `verify` equals the
in-memory pair score), on an empty batch, and on bad input (one clear error
per input). One device vs two logical CPUs is in test_distributed_methods.py,
which takes its methods from the registry too. A method added to the registry
is covered here without editing this file.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_ssl.models import registry
from keras_ssl.training import TrainConfig, read_config, train
from tests.helpers import BLOCK_KERAS, smoke_dataset

PY = sys.executable

# Calls every signature of each SavedModel given (one process for all: TF's start-up is most of
# the cost), whatever it declares: string inputs get the encoded files (PNGs or WAVs; the second
# string input the same reversed), the other inputs the dense batch (uint8 pixels or float32
# waveforms); `bad_dense` is a tensor of the wrong rank or channels. A model that fails to load
# or serve is reported under its name and the others still run.
SERVE_EVERY_SIGNATURE = BLOCK_KERAS + textwrap.dedent('''
    import traceback
    import numpy as np, tensorflow as tf


    def serve_all(path, npz):
        pngs, pixels, bad_dense = list(npz["files"]), npz["dense"], npz["bad_dense"]
        m = tf.saved_model.load(path)
        out = {}

        def good(spec, n):
            args, strings = {}, 0
            for key in sorted(spec):
                if spec[key].dtype == tf.string:
                    args[key] = tf.constant(pngs[:n] if strings == 0 else pngs[:n][::-1], tf.string)
                    strings += 1
                else:
                    args[key] = tf.constant(pixels[:n])
            return args

        for name, fn in m.signatures.items():
            spec = fn.structured_input_signature[1]
            entry = {"inputs": {k: s.dtype.name for k, s in spec.items()}}
            entry["outputs"] = {k: v.numpy().tolist() for k, v in fn(**good(spec, len(pngs))).items()}
            entry["empty"] = {k: list(v.shape) for k, v in fn(**good(spec, 0)).items()}
            bad = {}
            for key in spec:
                args = good(spec, 2)
                if spec[key].dtype == tf.string:
                    args[key] = tf.constant([pngs[0], b"garbage!"])
                else:
                    args[key] = tf.constant(bad_dense)
                cases = {"bad_item": args}
                if len(spec) > 1:
                    cases["uneven"] = dict(good(spec, 2), **{key: good(spec, 1)[key]})
                for case, call_args in cases.items():
                    try:
                        fn(**call_args)
                        bad[f"{key}/{case}"] = None
                    except Exception as e:
                        bad[f"{key}/{case}"] = str(e)
            entry["errors"] = bad
            out[name] = entry
        return out


    served = {}
    for method, path, npz in json.load(open(sys.argv[1])):
        try:
            served[method] = {"signatures": serve_all(path, np.load(npz, allow_pickle=True))}
        except Exception:
            served[method] = {"error": traceback.format_exc()}
    keras_loaded = "keras" in sys.modules or "keras_ssl" in sys.modules
    print(json.dumps({"served": served, "keras_loaded": keras_loaded}))
''')

# Quick, deterministic settings shared by every method; the method adds its smoke_options.
BASE = dict(dataset="digits", width_multiplier=0.25, epochs=1, steps_per_epoch=2, optimizer="adam",
            learning_rate=1e-3, lr_scaling="none", warmup_epochs=0.0, verbose=0, dtype_policy="float32",
            val_fraction=0.2)


def _run(args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([PY, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def _settings(method, model_dir):
    return dict(BASE, method=method.name, model_dir=model_dir, **method.smoke_options,
                **smoke_dataset(method, os.path.dirname(model_dir)))


def _wav(waveform):
    from scipy.io import wavfile

    buf = io.BytesIO()
    wavfile.write(buf, 16000, np.round(waveform * 32768).astype(np.int16))
    return buf.getvalue()


def _inputs(method, settings):
    """Five test examples as the model takes them, their encoded files, and a bad dense tensor.
    Audio: waveforms on the int16 grid (what a WAV holds), so bytes and floats serve alike."""
    from keras_ssl.data import load_source

    if method.modality == "audio":
        test = load_source(settings["dataset"], audio_seconds=settings.get("audio_seconds")).test
        dense = np.round(test.waveforms[:5] * 32768).clip(-32768, 32767) / 32768
        dense = dense.astype(np.float32)
        return dense, [_wav(w) for w in dense], np.zeros([2, 4, 4], np.float32)
    size = settings.get("image_size")
    images = load_source("digits", image_size=(size, size) if size else None).test.images[:5]
    return images, [_png(i) for i in images], np.zeros([2, 8, 8, images.shape[-1] + 1], np.uint8)


def _binaries(run):
    """keras-ssl-evaluate and keras-ssl-export on the run."""
    root, model_dir = run["root"], run["model_dir"]
    _run(["keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=none", "--probe_max_iter=100"], root)
    proc = _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={root / 'exports'}"], root)
    run["export_path"] = proc.stdout.strip().splitlines()[-1].split("exported: ")[-1]


def _serve_every_export(runs, root):
    """Every exported method's signatures, from one fresh process without keras or keras_ssl."""
    exported = [(name, run["export_path"], run["npz"]) for name, run in runs.items() if "error" not in run]
    listing = root / "exports.json"
    listing.write_text(json.dumps(exported))
    proc = subprocess.run([PY, "-c", SERVE_EVERY_SIGNATURE, str(listing)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode != 0:
        for name, _, _ in exported:
            runs[name]["error"] = AssertionError(f"the serving process failed:\n{proc.stderr[-3000:]}")
        return
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, _, _ in exported:
        served = result["served"][name]
        if "error" in served:
            runs[name]["error"] = AssertionError(f"serving {name} failed:\n{served['error'][-3000:]}")
        else:
            runs[name]["served"] = dict(served, keras_loaded=result["keras_loaded"])


@pytest.fixture(scope="module")
def contract_runs(tmp_path_factory):
    """Every registered method trained (and resumed) in this process; its binaries run in
    subprocesses, two methods at a time, while the next method trains; then one fresh
    process serves every export."""
    from concurrent.futures import ThreadPoolExecutor

    runs, pending = {}, {}
    with ThreadPoolExecutor(2) as pool:
        for method in registry.methods():
            root = tmp_path_factory.mktemp(method.name)
            run = runs[method.name] = dict(method=method, root=root, model_dir=str(root / "run"))
            try:
                run["settings"] = settings = _settings(method, run["model_dir"])
                run["first"] = train(TrainConfig.from_dict(settings))
                run["resumed"] = train(TrainConfig.from_dict(dict(settings, epochs=2)))
                run["images"], files, bad_dense = _inputs(method, settings)
                run["npz"] = str(root / "inputs.npz")
                np.savez(run["npz"], dense=run["images"], files=np.array(files, dtype=object), bad_dense=bad_dense)
                pending[method.name] = pool.submit(_binaries, run)
            except Exception as e:  # reported by this method's tests only
                run["error"] = e
        for name, future in pending.items():
            try:
                future.result()
            except Exception as e:
                runs[name]["error"] = e
    _serve_every_export(runs, tmp_path_factory.mktemp("serving"))
    return runs


@pytest.fixture(params=registry.names())
def method_run(request, contract_runs):
    run = contract_runs[request.param]
    if "error" in run:
        raise run["error"]
    return run


def test_config_round_trips(method_run):
    settings, model_dir = method_run["settings"], method_run["model_dir"]
    config = TrainConfig.from_dict(dict(settings, epochs=2)).validate()
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert read_config(model_dir) == config  # what config.json holds is the run's config
    assert isinstance(config.options, method_run["method"].options)


# Options named otherwise than the constructor argument they set (the flag names say more).
OPTION_ARGUMENTS = {"head_hidden_dim": "hidden_dim", "patch_stride": "stride", "soft_margin": "soft",
                    "normalize_embeddings": "normalize", "patch_preset": "preset"}


def test_option_defaults_are_the_model_constructor_defaults(method_run):
    """`keras-ssl-train` (the options) and `fit()` in user code (the model's constructor) start
    from the same hyper-parameters: every option that is also a constructor argument of the
    method's model class has one default."""
    import dataclasses
    import inspect

    from keras_ssl.saving import load_model

    model_class = type(load_model(os.path.join(method_run["model_dir"], "model.keras")))
    parameters = inspect.signature(model_class.__init__).parameters
    argument = {f.name: OPTION_ARGUMENTS.get(f.name, f.name) for f in dataclasses.fields(method_run["method"].options)}
    shared = [f for f in dataclasses.fields(method_run["method"].options) if argument[f.name] in parameters
              and parameters[argument[f.name]].default is not inspect.Parameter.empty]
    assert [(f.name, f.default) for f in shared] == [(f.name, parameters[argument[f.name]].default) for f in shared]
    assert shared or not dataclasses.fields(method_run["method"].options), "no option matched a constructor argument"


def test_predict_refuses_a_wrong_batch_in_one_line_and_keeps_working(method_run):
    from keras_ssl.errors import UserError
    from keras_ssl.saving import load_model

    model = load_model(os.path.join(method_run["model_dir"], "model.keras"))
    right = method_run["images"]
    wrong = right[..., None] if method_run["method"].modality == "audio" else right[..., 0]  # one axis off
    expected = model.predict(right, verbose=0)
    with pytest.raises(UserError, match=r"expects .* batches \[batch, .*got shape") as error:
        model.predict(wrong, verbose=0)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="got int32"):  # integers other than uint8 pixels
        model.predict(right.astype(np.int32), verbose=0)
    np.testing.assert_allclose(model.predict(right, verbose=0), expected, atol=1e-5)


def test_trains_resumes_and_saves(method_run):
    first, resumed, model_dir = method_run["first"], method_run["resumed"], method_run["model_dir"]
    assert first["epochs_run"] == 1 and resumed["epochs_run"] == 1  # the rerun continued from epoch 1
    assert all(np.isfinite(v) for v in resumed["final_metrics"].values()) and "loss" in resumed["final_metrics"]
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == ["epoch_0001.weights.h5",
                                                                          "epoch_0002.weights.h5"]


def test_evaluate_runs_the_declared_evaluations(method_run):
    """Every declared evaluation's keys are in the report, and each figure says something: a
    trained encoder's probe and kNN beat chance, the pair scores rank same above different,
    the pretext and InfoNCE tasks beat guessing, and the retrieval figures are ordered."""
    report = json.load(open(os.path.join(method_run["model_dir"], "evaluation.json")))
    assert report["method"] == method_run["method"].name
    training = json.load(open(os.path.join(method_run["model_dir"], "training.json")))
    chance = 1.0 / len(training["class_names"])
    # the probe works: its best point beats chance (a smoke-sized audio run's own context may not,
    # its MFCC baseline does); the kNN is checked against NumPy in test_knn.py
    probes = [report["linear_probe_accuracy"]] + [p["word"] for p in report.get("probes", {}).values()]
    assert max(probes) >= 1.5 * chance, (probes, chance)
    assert 0.0 <= report["knn_accuracy"] <= 1.0 and report["knn_accuracy"] == report["knn_accuracy_k20"]
    expected = {"verification": ("roc_auc", "eer", "threshold", "one_shot_accuracy"),
                "retrieval": ("precision_at_1", "r_precision", "map_at_r", "recall_at_k"),
                "pretext": ("pretext_accuracy",), "info_nce": ("info_nce", "info_nce_plot")}
    for name in method_run["method"].evaluations:
        for key in expected[name]:
            assert key in report, (name, key, sorted(report))
    if "roc_auc" in report:
        assert report["roc_auc"] > 0.6 and 0.0 <= report["eer"] < 0.5, (report["roc_auc"], report["eer"])
    if "precision_at_1" in report:
        recall = report["recall_at_k"]
        recall = [recall[k] for k in sorted(recall, key=int)]  # R@1, R@2, ...: never falls as k grows
        assert report["precision_at_1"] >= 1.5 * chance and recall == sorted(recall), report
        assert 0.0 < report["map_at_r"] <= report["r_precision"] + 1e-9, report  # each term P(i) rel(i) <= rel(i)
    if "pretext_accuracy" in report:
        assert report["pretext_accuracy"] > 1 / 8 + 0.05, report["pretext_accuracy"]  # 4 rotations, 8 positions
    if "info_nce" in report:
        negatives = TrainConfig.from_dict(method_run["settings"]).options.num_negatives
        # a smoke run barely learns; a mislabelled positive would score near 0, under chance
        assert report["info_nce"]["accuracy"][0] > 1.0 / (1 + negatives), report["info_nce"]


def test_export_serves_every_declared_endpoint(method_run):
    import tensorflow as tf

    from keras_ssl.saving import load_model

    served, images = method_run["served"], method_run["images"]
    assert not served["keras_loaded"]
    model = load_model(os.path.join(method_run["model_dir"], "model.keras"))
    shape = images.shape[1:]
    threshold = json.load(open(os.path.join(method_run["model_dir"], "evaluation.json"))).get("threshold")
    declared = model.serving_endpoints(shape, threshold if model.supports_threshold else None)
    assert sorted(served["signatures"]) == sorted(e.name for e in declared)
    facts = json.load(open(os.path.join(method_run["export_path"], "assets.extra", "preprocessing.json")))
    assert sorted(facts["signatures"]) == sorted(served["signatures"])

    # The served representation is model.predict, L2-normalised, through encoded files and dense input alike.
    expected = tf.math.l2_normalize(tf.cast(model.predict(images, verbose=0), tf.float32), -1).numpy()
    embedding_signatures = [e.name for e in declared if any(o.name == "embedding" for o in e.outputs)]
    assert len(embedding_signatures) >= 2 and "serving_default" in embedding_signatures
    for name in embedding_signatures:
        np.testing.assert_allclose(served["signatures"][name]["outputs"]["embedding"], expected, atol=1e-5)
    assert facts["embedding_dim"] == expected.shape[1]

    for endpoint in declared:
        entry = served["signatures"][endpoint.name]
        for output in endpoint.outputs:  # declared shapes, for a batch and for an empty batch
            assert np.asarray(entry["outputs"][output.name]).shape == (len(images), *output.shape)
            assert entry["empty"][output.name] == [0, *output.shape]
        for case, error in entry["errors"].items():  # every bad input refused, with a message that says why
            assert error, f"{endpoint.name} accepted bad input {case}"
            reason = ("not PNG/JPEG/GIF/BMP/WebP", "is not compatible with expected shape", "same number of items",
                      "not WAV files")
            assert any(r in error for r in reason), (endpoint.name, case, error[-500:])
    # Every output equals the in-memory endpoint on the same (decoded, resized) images.
    from keras_ssl.data.sources import resize_uint8

    for endpoint in declared:
        args, strings = [], 0
        for spec in endpoint.inputs:
            batch = images if spec.kind in ("pixels", "waveform") or strings == 0 else images[::-1]
            strings += spec.kind in ("image", "wav")
            if spec.audio:
                args.append(tf.constant(batch))
                continue
            h, w = spec.size or shape[:2]
            args.append(tf.cast(resize_uint8(tf.constant(batch), h, w), tf.float32) / 255.0)
        expected = endpoint.function(*args)
        for output in endpoint.outputs:
            got = np.asarray(served["signatures"][endpoint.name]["outputs"][output.name])
            want = np.asarray(expected[output.name])
            if output.dtype == "float32":
                np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{endpoint.name}/{output.name}")
            else:
                assert got.tolist() == want.tolist(), (endpoint.name, output.name)
        if endpoint.dataset_classes:
            assert facts["class_names"] == [str(i) for i in range(10)]  # the digits' classes
    if "verify" in served["signatures"]:  # a Euclidean distance (or probability) at the calibrated threshold
        assert facts["threshold"] == pytest.approx(threshold if threshold is not None else model.threshold)
        e = model.embed(images)
        out = served["signatures"]["verify"]["outputs"]
        np.testing.assert_allclose(out.get("distance", out.get("score")), model.pair_score(e, e[::-1]), atol=1e-5)
    if "classify" in served["signatures"]:
        probs = np.asarray(served["signatures"]["classify"]["outputs"]["probabilities"])
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_every_method_option_is_a_documented_flag():
    proc = subprocess.run([PY, "-m", "keras_ssl.bin.train", "--helpfull"], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode in (0, 1) and "--model_dir" in proc.stdout  # absl's help exits 1
    for name in registry.option_owners():
        assert f"--{name}:" in proc.stdout or f"--[no]{name}:" in proc.stdout, name
    for name in registry.names():
        assert name in proc.stdout


def test_an_option_of_another_method_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([PY, "-m", "keras_ssl.bin.train", "--method=rotation", "--margin=0.3",
                           f"--model_dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 2
    assert "error: margin does not apply to method rotation (it is an option of siamese, triplet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_method_is_refused_not_run_as_another():
    from keras_ssl.errors import UserError

    with pytest.raises(UserError, match="method must be one of simclr, siamese"):
        TrainConfig(method="byol")
    with pytest.raises(UserError, match="unknown setting 'temprature'"):
        TrainConfig.from_dict({"method": "simclr", "temprature": 0.1})
