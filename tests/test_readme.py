"""Every Python example of README.md runs as written, so the README cannot drift from the code.

A fenced ```python block is one example. The HTML comment before it may name it
(`<!-- example: NAME -->`), say it continues another (`after OTHER`: it runs in the
same process, after OTHER's code) or that it is not run with the others
(`skip: why`; only the serving-client example, which needs TF Serving: it runs
against stand-in REST and gRPC servers that accept only the signatures and
inputs each model really declares, the last test here). The examples run in one fresh process (TF's
start-up is most of a small example's cost), each with those continuing it in
a namespace of its own and after `keras.backend.clear_session()` with the
float32 policy, as separate scripts would; in an empty directory holding the
files the examples name (`shoe.png`, a small `data/spoken_digits`), with a
prelude that shrinks the work, never the code: datasets keep 256 training and
64 test examples, and every `fit` runs one epoch of at most two steps.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import library_methods, library_modalities, write_chirp_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"<!-- example: (\w+)(?: after (\w+))?(?: skip: (.*?))? -->")
ALLOWED_SKIPS = {"serving_clients"}  # run here against stand-in servers instead (the last test)
# Files the examples (with those continuing them) write, by the first example's name.
WRITES = {"simclr_fit": ("encoder.keras", "simclr.keras", "saved_models/my_simclr/1"),
          "relative_position_fit": ("patches.png", "saved_models/relpos/1"),
          "views_grid": ("views.png",), "train_from_code": ("runs/try/encoder.keras", "runs/try/training.json"),
          "models_config": ("saved_models/models.config",)}

PRELUDE = '''
import dataclasses
import keras
import keras_ssl.data
import keras_ssl.data.audio


def _small(ds):
    return dataclasses.replace(ds, train=ds.train.take(256), test=ds.test.take(64))


_load_source, _load_audio = keras_ssl.data.load_source, keras_ssl.data.audio.load_audio_folder
keras_ssl.data.load_source = lambda *a, **k: _small(_load_source(*a, **k))
keras_ssl.data.audio.load_audio_folder = lambda *a, **k: _small(_load_audio(*a, **k))
_fit = keras.Model.fit


def _short_fit(self, x=None, y=None, **kwargs):
    kwargs.update(epochs=1, verbose=0)
    if kwargs.get("steps_per_epoch"):
        kwargs["steps_per_epoch"] = 2
    return _fit(self, x, y, **kwargs)


keras.Model.fit = _short_fit
'''


def readme_examples():
    """`{name: (code, after, skip)}` in README order."""
    text = open(os.path.join(ROOT, "README.md")).read()
    examples, count = {}, 0
    for match in re.finditer(r"(<!-- example:[^\n]*-->\n)?```python\n(.*?)```", text, re.S):
        count += 1
        marker = MARKER.match(match.group(1) or "")
        name, after, skip = marker.groups() if marker else (f"example_{count}", None, None)
        assert name not in examples, f"two README examples are named {name}"
        examples[name] = (match.group(2), after, skip)
    return examples


EXAMPLES = readme_examples()


def _root(name):
    after = EXAMPLES[name][1]
    return _root(after) if after else name


def _script(root):
    """The root example and every example continuing it, in README order, as one program."""
    parts = [f"\n# --- README example {name}\n{code}" for name, (code, _, skip) in EXAMPLES.items()
             if not skip and _root(name) == root]
    return "".join(parts)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from PIL import Image

    from keras_ssl.data import load_source

    root = tmp_path_factory.mktemp("readme")
    Image.fromarray(load_source("fashion_mnist").test.images[0, :, :, 0]).save(root / "shoe.png")
    write_chirp_folder(str(root / "data" / "spoken_digits"), per_class=48, seconds=0.5)  # 108 train clips
    (root / "data" / "lines.txt").write_text("\n".join(f"The {a} {b} the {c}." for a in ("cat", "dog", "fox", "cow")
                                                       for b in ("sat on", "ran to", "slept by") for c in
                                                       ("mat", "tree", "river", "barn", "house")) + "\n")
    return root


def test_every_python_block_is_run_or_skipped_for_a_stated_reason():
    assert len(EXAMPLES) >= 10 and not any(name.startswith("example_") for name in EXAMPLES)  # all named
    skipped = {name for name, (_, _, skip) in EXAMPLES.items() if skip}
    assert skipped <= ALLOWED_SKIPS, skipped
    for name, (_, after, _) in EXAMPLES.items():
        assert after is None or after in EXAMPLES, (name, after)


# Runs each (root example + continuations) in its own namespace; a failure is recorded, not fatal.
DRIVER = '''
import json as _json, sys as _sys, traceback as _traceback
_results = {}
for _name, _code in _json.load(open(_sys.argv[1])):
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    try:
        exec(compile(_code, f"<README example {_name}>", "exec"), {"__name__": "__main__"})
        _results[_name] = None
    except BaseException:
        _results[_name] = _traceback.format_exc()
_json.dump(_results, open(_sys.argv[2], "w"))
'''
ROOTS = [n for n, (_, after, skip) in EXAMPLES.items() if not skip and not after]


@pytest.fixture(scope="module")
def example_results(workdir):
    """`{root example: None or its traceback}`, every runnable example run once."""
    programs, results = workdir / "examples.json", workdir / "results.json"
    programs.write_text(json.dumps([(name, _script(name)) for name in ROOTS]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + DRIVER, str(programs), str(results)], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and results.exists(), f"the README examples' process failed:\n{proc.stderr[-4000:]}"
    return json.loads(results.read_text())


@pytest.mark.parametrize("name", ROOTS)
def test_readme_example_runs(name, workdir, example_results):
    # with the examples that continue it, in one namespace
    assert example_results[name] is None, f"README example {name} failed:\n{example_results[name][-4000:]}"
    for path in WRITES.get(name, ()):  # what the example says it writes is there
        assert os.path.exists(workdir / path), (name, path)


# The models the serving example asks TF Serving for, as the methods (and options) that make them.
SERVED_BY_README = {"siamese": ("siamese", {}), "rotation": ("rotation", {}),
                    "simclr": ("simclr", {"online_probe": True}), "cpc": ("cpc_audio", {})}


def _declared_endpoints(root):
    """{served model name: {signature: Endpoint}}, from untrained tiny models of each method."""
    from keras_ssl.training import build_model, load_run_dataset
    from tests.helpers import smoke_config

    declared = {}
    for served, (method, extra) in SERVED_BY_README.items():
        config = smoke_config(method, root, **extra)
        dataset = load_run_dataset(config)
        model = build_model(config, dataset)
        shape = dataset.input_shape
        endpoints = model.serving_endpoints(shape, model.threshold if model.supports_threshold else None)
        declared[served] = {e.name: e for e in endpoints}
    return declared


def _stand_in_answer(declared, calls, model, signature, inputs):
    """What TF Serving would answer in shape and type, after checking the request against the
    signatures the model really declares; zeros as values (the numbers are test_serving.py's)."""
    calls.append((model, signature))
    if model not in declared or signature not in declared[model]:
        raise ValueError(f"model {model} serves no signature {signature!r}")
    endpoint = declared[model][signature]
    if sorted(inputs) != sorted(i.name for i in endpoint.inputs):
        raise ValueError(f"{model}/{signature} takes {[i.name for i in endpoint.inputs]}, got {sorted(inputs)}")
    n = len(next(iter(inputs.values())))
    return {o.name: np.zeros([n, *[d or 3 for d in o.shape]], o.dtype) for o in endpoint.outputs}


def test_serving_clients_example_runs_against_stand_in_servers(workdir, tmp_path, monkeypatch):
    """The README's client example, as written but for the two port numbers, against stand-in
    REST and gRPC servers that accept only what each model really serves."""
    import http.server
    import threading
    from concurrent import futures

    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tests.helpers import chirp

    declared, calls = _declared_endpoints(tmp_path), []

    class Rest(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            model = re.match(r"/v1/models/(\w+)(?:/versions/\d+)?:predict$", self.path).group(1)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                out = _stand_in_answer(declared, calls, model, body["signature_name"], body["inputs"])
                status, reply = 200, {"outputs": {k: v.tolist() for k, v in out.items()}}
            except ValueError as e:
                status, reply = 400, {"error": str(e)}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Grpc(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC's name)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            try:
                out = _stand_in_answer(declared, calls, request.model_spec.name,
                                       request.model_spec.signature_name, inputs)
            except ValueError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            reply = predict_pb2.PredictResponse()
            for k, v in out.items():
                reply.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return reply

    rest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Rest)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    rpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Grpc(), rpc)
    grpc_port = rpc.add_insecure_port("127.0.0.1:0")
    rpc.start()
    code = EXAMPLES["serving_clients"][0]
    assert code.count("8501") >= 1 and code.count("8500") >= 1
    code = code.replace("8501", str(rest.server_address[1])).replace("8500", str(grpc_port))
    from scipy.io import wavfile

    monkeypatch.chdir(workdir)
    wave = chirp(300.0, 16000, 16000, np.random.default_rng(0))
    wavfile.write("seven.wav", 16000, np.round(wave * 32767).astype(np.int16))
    png = open("shoe.png", "rb").read()
    try:
        exec(compile(code, "<README example serving_clients>", "exec"), {"png": png, "png_a": png, "png_b": png})
    finally:
        rest.shutdown()
        rest.server_close()
        rpc.stop(0)
    assert {("siamese", "serving_default"), ("siamese", "verify"), ("rotation", "rotation"),
            ("simclr", "classify"), ("cpc", "serving_default")} <= set(calls), calls


def test_the_flag_paragraph_lists_every_flag_of_keras_ssl_train():
    """README's "Run flags" paragraph names every flag the binary defines, and each method's
    list names exactly that method's options, each modality's exactly its settings (the lists
    are written by hand: this holds them)."""
    import dataclasses

    script = ("import json; from absl import flags; import keras_ssl.bin.train; "
              "print(json.dumps([f.name for f in flags.FLAGS.get_flags_for_module('keras_ssl.bin.train')]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    run_flags = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    paragraph = readme[readme.index("Run flags: `"):readme.index("Setting flags are generated")]
    listed = set(re.findall(r"--(\w+)", paragraph))
    assert "model_dir" in run_flags, run_flags
    assert run_flags - listed == set() and listed - run_flags == set(), (run_flags - listed, listed - run_flags)
    settings = readme[readme.index("Setting flags are generated"):readme.index("Method flags are generated")]
    for modality in library_modalities():
        found = re.search(rf"\b{modality.name}\s+`([^`]*)`", settings)
        assert found, f"README lists no setting flags for {modality.name} methods"
        declared = {f.name for f in dataclasses.fields(modality.settings)}
        assert set(re.findall(r"--(\w+)", found.group(1))) == declared, modality.name
    methods = readme[readme.index("Method flags are generated"):readme.index("(a test holds this")]
    for method in library_methods():
        found = re.search(rf"\b{method.name}\s+`([^`]*)`", methods)
        assert found, f"README lists no flags for method {method.name}"
        options = {f.name for f in dataclasses.fields(method.options)}
        assert set(re.findall(r"--(\w+)", found.group(1))) == options, method.name


# The README's opening sentence names each method family; a method registered under a new
# prefix must be added here and there.
METHOD_FAMILIES = {"simclr": "SimCLR", "siamese": "Siamese", "triplet": "triplet", "rotation": "rotation",
                   "relative_position": "relative patch position", "cpc": "CPC", "vae": "VAE",
                   "vqvae": "VQ-VAE", "gpt": "GPT", "bert": "BERT", "mae": "MAE", "igpt": "iGPT",
                   "wav2vec2": "wav2vec 2.0", "hubert": "HuBERT"}


def test_the_opening_sentence_names_every_registered_method():
    with open(os.path.join(ROOT, "README.md")) as f:
        opening = f.read().split("\n\n")[1]
    for name in [m.name for m in library_methods()]:
        family = next((f for f in METHOD_FAMILIES if name == f or name.startswith(f + "_")), None)
        assert family, f"method {name}: add its family to METHOD_FAMILIES and to the README's opening sentence"
        assert METHOD_FAMILIES[family] in opening, (name, opening)


def test_the_demo_table_shows_the_figures_of_the_cpu_its_caption_names():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, "docs", "BENCHMARKS.md")) as f:
        benchmarks = f.read().splitlines()
    start = re.search(r"^metric +value$", readme, re.MULTILINE).start()
    table = readme[start:readme.index("exported: saved_models/")]
    figures = re.findall(r"^(?:knn_accuracy_k20|knn_accuracy_k200|linear_probe_accuracy|grid_linear_probe_accuracy|"
                         r"grid_knn_accuracy)\s+(\d+\.\d+)%$", table, re.MULTILINE)
    assert len(figures) == 5, table
    caption = readme[readme.index("exported: saved_models/"):][:400]
    assert "(What it printed on a 2-core Xeon with AMX" in caption, caption
    rows = [line for line in benchmarks if "Xeon-AMX" in line and "make demo" in line
            and all(f"{figure}%" in line for figure in figures)]
    assert rows, f"no Xeon-AMX make-demo row of docs/BENCHMARKS.md shows {figures}"
