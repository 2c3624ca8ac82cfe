"""Every Python example of README.md runs as written, so the README cannot drift from the code.

A fenced ```python block is one example. The HTML comment before it may name it
(`<!-- example: NAME -->`), say it continues another (`after OTHER`: it runs in the
same process, after OTHER's code) or that it is not run (`skip: why`; only an
example that needs a running TF Serving may be skipped, and the client methods
it calls are checked to exist). The examples run in one fresh process (TF's
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

import pytest

from tests.helpers import write_chirp_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"<!-- example: (\w+)(?: after (\w+))?(?: skip: (.*?))? -->")
ALLOWED_SKIPS = {"serving_clients"}
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
    return root


def test_every_python_block_is_run_or_skipped_for_a_stated_reason():
    assert len(EXAMPLES) >= 10 and not any(name.startswith("example_") for name in EXAMPLES)  # all named
    skipped = {name for name, (_, _, skip) in EXAMPLES.items() if skip}
    assert skipped <= ALLOWED_SKIPS, skipped
    for name, (_, after, _) in EXAMPLES.items():
        assert after is None or after in EXAMPLES, (name, after)


def test_skipped_serving_example_calls_only_real_client_methods():
    from keras_ssl.serving import GrpcClient, RestClient

    code = EXAMPLES["serving_clients"][0]
    called = set(re.findall(r"(?:rest|grpc|Client\([^)]*\))\.(\w+)\(", code))
    assert called >= {"embed", "verify", "classify"}
    for method in called:
        assert hasattr(RestClient, method) and hasattr(GrpcClient, method), method


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
