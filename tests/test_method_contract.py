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

import json
import os
import re
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
# the cost) with the request values the parent made from the declared endpoints' input kinds
# (`<signature>|<input>|good`: one value per test example, `...|bad`: a value to refuse), so
# this process, which cannot import keras_ssl, guesses nothing. A model that fails to load or
# serve is reported under its name and the others still run.
SERVE_EVERY_SIGNATURE = BLOCK_KERAS + textwrap.dedent('''
    import traceback
    import numpy as np, tensorflow as tf


    def plain(t):
        """A served tensor as JSON: strings decoded."""
        if t.dtype == tf.string:
            return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(t.numpy()).tolist()
        return t.numpy().tolist()


    def serve_all(path, npz):
        m = tf.saved_model.load(path)
        out = {}

        def value(signature, key, which):
            v = npz[f"{signature}|{key}|{which}"]
            return v.tolist() if v.dtype == object else v

        for name, fn in m.signatures.items():
            spec = fn.structured_input_signature[1]
            n = len(value(name, sorted(spec)[0], "good"))

            def good(count):
                return {k: tf.constant(value(name, k, "good")[:count], spec[k].dtype) for k in spec}

            entry = {"inputs": {k: s.dtype.name for k, s in spec.items()}}
            entry["outputs"] = {k: plain(v) for k, v in fn(**good(n)).items()}
            entry["empty"] = {k: list(v.shape) for k, v in fn(**good(0)).items()}
            bad = {}
            for key in spec:
                cases = {"bad_item": dict(good(2), **{key: tf.constant(value(name, key, "bad"), spec[key].dtype)})}
                if len(spec) > 1:
                    cases["uneven"] = dict(good(2), **{key: good(1)[key]})
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

# The registered methods are trained in SHARDS test modules (this one, SHARD 0, and
# test_method_contract_b.py), so that pytest-xdist's workers (`--dist loadfile` gives a whole
# module to one) share them. A stage stays in its parent's shard.
SHARDS = 2
SHARD = 0


def shard_methods(shard, shards=SHARDS):
    """The registered methods of `shard`: whole families (a method with its stages), dealt
    to the shards in turn in the order of their names, parents before their stages."""
    families = {}
    for method in registry.methods():
        root = method
        while root.parent:
            root = registry.get(root.parent)
        families.setdefault(root.name, []).append(method)
    dealt = [family for i, (_, family) in enumerate(sorted(families.items())) if i % shards == shard]
    return sorted((m for family in dealt for m in family), key=lambda m: m.parent is not None)


def pytest_generate_tests(metafunc):
    """Each per-method test runs for the methods of its module's shard."""
    if "method_name" in metafunc.fixturenames:
        metafunc.parametrize("method_name", [m.name for m in shard_methods(metafunc.module.SHARD)])


# Quick, deterministic settings shared by every method; the method adds its smoke_options.
BASE = dict(dataset="digits", width_multiplier=0.25, epochs=1, steps_per_epoch=2, optimizer="adam",
            learning_rate=1e-3, lr_scaling="none", warmup_epochs=0.0, verbose=0, dtype_policy="float32",
            val_fraction=0.2)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _binary(module, *args):
    """The command line of a keras_ssl binary that also knows the test-only methods."""
    return [PY, "-m", "tests.run_binary", module, *args]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))


def _run(args, cwd):
    env = _env()
    proc = subprocess.run(_binary(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _settings(method, model_dir, runs):
    """The method's contract settings; a stage continues the contract's run of its parent."""
    parent = {"parent_run": runs[method.parent]["model_dir"]} if method.parent else {}
    return dict(BASE, method=method.name, model_dir=model_dir, **method.smoke_options,
                **smoke_dataset(method, os.path.dirname(model_dir)), **parent)


def _examples(method, settings):
    """Five test examples of the method's smoke dataset, as its model takes them."""
    from keras_ssl import modalities

    modality = modalities.get(method.modality)
    return modality.examples(modality.load_run_dataset(TrainConfig.from_dict(settings)).test.take(5))


def _inputs_of(endpoint, examples):
    """`(kind, examples)` per input of `endpoint`: the second and later inputs get the examples
    reversed, so that a pair signature compares different items."""
    from keras_ssl.modalities.input_kinds import input_kind

    return [(input_kind(spec.kind), examples if i == 0 else examples[::-1]) for i, spec in enumerate(endpoint.inputs)]


def _request_values(model, examples):
    """`{"<signature>|<input>|good": value, "...|bad": value}` for every endpoint the model can
    declare (a pair-verifying model with a threshold, so `verify` is listed)."""
    shape = examples.shape[1:]
    values = {}
    for endpoint in model.serving_endpoints(shape, 1.0 if model.supports_threshold else None):
        for spec, (kind, batch) in zip(endpoint.inputs, _inputs_of(endpoint, examples)):
            good = kind.request_value(batch, shape, spec)
            values[f"{endpoint.name}|{spec.name}|good"] = np.array(good, dtype=object) if kind.encoded else good
            bad = kind.bad_value(batch, shape, spec)
            values[f"{endpoint.name}|{spec.name}|bad"] = np.array(bad, dtype=object) if kind.encoded else bad
    return values


def _binaries(run):
    """keras-ssl-evaluate, then keras-ssl-export, on the run (one process: `tests.run_binary`)."""
    root, model_dir = run["root"], run["model_dir"]
    proc = _run(["keras_ssl.bin.evaluate", f"--model_dir={model_dir}", "--plot=none", "--probe_max_iter=100",
                 "--then", "keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={root / 'exports'}"],
                root)
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
def contract_runs(request, tmp_path_factory):
    """Every registered method of the module's shard trained (and resumed) in this process;
    its binaries run in subprocesses, two methods at a time, while the next method trains;
    then one fresh process serves every export."""
    from concurrent.futures import ThreadPoolExecutor

    runs, pending = {}, {}
    with ThreadPoolExecutor(2) as pool:
        for method in shard_methods(request.module.SHARD):  # parents first
            root = tmp_path_factory.mktemp(method.name)
            run = runs[method.name] = dict(method=method, root=root, model_dir=str(root / "run"))
            try:
                run["settings"] = settings = _settings(method, run["model_dir"], runs)
                run["first"] = train(TrainConfig.from_dict(settings))
                run["resumed"] = train(TrainConfig.from_dict(dict(settings, epochs=2)))
                run["images"] = _examples(method, settings)
                run["npz"] = str(root / "inputs.npz")
                from keras_ssl.saving import load_model

                np.savez(run["npz"], **_request_values(load_model(os.path.join(run["model_dir"], "model.keras")),
                                                       run["images"]))
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


@pytest.fixture
def method_run(method_name, contract_runs):
    run = contract_runs[method_name]
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
    wrong = right[..., None]  # one axis too many
    expected = model.predict(right, verbose=0)
    with pytest.raises(UserError, match=r"expects .* batches \[batch, .*got shape") as error:
        model.predict(wrong, verbose=0)
    assert "\n" not in str(error.value)
    other = np.float32 if right.dtype == np.int32 else np.int32  # token ids: floats; pixels, waveforms: int32
    with pytest.raises(UserError, match=f"got {np.dtype(other).name}"):  # a dtype the model does not take
        model.predict(right.astype(other), verbose=0)
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
    from keras_ssl.evaluation.method_evaluations import evaluation

    for name in method_run["method"].evaluations:  # each declared evaluation's keys, and its plots' files
        declared = evaluation(name)
        for key in declared.report_keys:
            assert key in report, (name, key, sorted(report))
        for key in declared.plots:  # written unless turned off (the contract runs --plot=none: no embedding plot)
            assert key not in report or os.path.getsize(report[key]) > 1000, (name, key)
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

    # The served representation is model.predict, L2-normalised, of what each input kind decodes
    # (encoded files and dense input alike); a model may serve none (a prior, a sampler).
    assert "serving_default" in served["signatures"]
    embedding_signatures = [e for e in declared if any(o.name == "embedding" for o in e.outputs)]
    assert ("embedding_dim" in facts) == bool(embedding_signatures)
    for endpoint in embedding_signatures:
        (kind, batch), = _inputs_of(endpoint, images)
        decoded = np.asarray(kind.function_input(batch, shape, endpoint.inputs[0]))
        expected = tf.math.l2_normalize(tf.cast(model.predict(decoded, verbose=0), tf.float32), -1).numpy()
        np.testing.assert_allclose(served["signatures"][endpoint.name]["outputs"]["embedding"], expected, atol=1e-5)
        assert facts["embedding_dim"] == expected.shape[1]

    for endpoint in declared:
        entry = served["signatures"][endpoint.name]
        for output in endpoint.outputs:  # declared shapes (None: varies), for a batch and for an empty batch
            got = np.asarray(entry["outputs"][output.name]).shape
            assert len(got) == 1 + len(output.shape) and got[0] == len(images), (endpoint.name, output.name, got)
            assert all(d is None or d == g for d, g in zip(output.shape, got[1:])), (endpoint.name, output.name, got)
            assert entry["empty"][output.name] == [0, *(d or 0 for d in output.shape)]
        for case, error in entry["errors"].items():  # every bad input refused, with a message that says why
            assert error, f"{endpoint.name} accepted bad input {case}"
            # an input kind's refusal names the signature and the item (every bad value is bad at index 1
            # or in its shape); a tensor of the wrong shape fails the signature's shape check
            named = re.search(rf"{endpoint.name}: [^;]+ \(indices\): \[1\]; ", error)
            assert named or "is not compatible with expected shape" in error or "same number of items" in error, \
                (endpoint.name, case, error[-500:])
    # Every output equals the in-memory endpoint on what its input kinds decode.
    for endpoint in declared:
        args = [tf.constant(kind.function_input(batch, shape, spec))
                for spec, (kind, batch) in zip(endpoint.inputs, _inputs_of(endpoint, images))]
        expected = endpoint.function(*args)
        for output in endpoint.outputs:
            got = np.asarray(served["signatures"][endpoint.name]["outputs"][output.name])
            want = np.asarray(expected[output.name])
            if output.dtype == "string":
                want = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(want)
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
    proc = subprocess.run(_binary("keras_ssl.bin.train", "--helpfull"), capture_output=True, text=True,
                          timeout=300, env=_env())
    assert proc.returncode == 0 and "--model_dir" in proc.stdout and "--parent_run" in proc.stdout
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


def test_a_method_declaring_an_unregistered_evaluation_is_refused_at_registration():
    import dataclasses

    from keras_ssl.evaluation.method_evaluations import EVALUATIONS, Evaluation, register_evaluation

    simclr = registry.get("simclr")
    with pytest.raises(ValueError, match="declares evaluation 'perplexty'; the registered ones are probe"):
        registry.register(dataclasses.replace(simclr, name="simclr_typo", evaluations=("probe", "perplexty")))
    assert "simclr_typo" not in registry.names()
    own = Evaluation("own_check", "a method's own evaluation", lambda context: {"own": 1}, ("own",))
    try:
        register_evaluation(own)
        with pytest.raises(ValueError, match="registered twice"):
            register_evaluation(dataclasses.replace(own))
    finally:
        EVALUATIONS.pop("own_check", None)
