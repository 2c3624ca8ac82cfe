"""Runs a keras_ssl binary with the test-only methods registered (`tests.toy_methods`):

    python -m tests.run_binary keras_ssl.bin.evaluate --model_dir=...

(with the repository on PYTHONPATH), as the binary's own `python -m` would run it."""

import runpy
import sys

import tests.toy_methods  # noqa: F401  (registers them)

if __name__ == "__main__":
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
