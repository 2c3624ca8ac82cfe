"""Runs keras_ssl binaries with the test-only methods registered (`tests.toy_methods`):

    python -m tests.run_binary keras_ssl.bin.evaluate --model_dir=...
    python -m tests.run_binary keras_ssl.bin.evaluate --model_dir=... --then keras_ssl.bin.export --model_dir=...

(with the repository on PYTHONPATH), each as the binary's own `python -m` would run it. Several
binaries joined by `--then` run one after the other in this one process (TensorFlow's start-up
is most of a small run's cost): the flags a binary defined are removed before the next one
defines its own, and the first that exits non-zero ends the process with its status."""

import runpy
import sys

from absl import flags

import tests.toy_methods  # noqa: F401  (registers them)

SEPARATOR = "--then"


def command_lines(argv):
    """`[[module, flag, ...], ...]`: the binaries of `argv`, split at `--then`."""
    commands, current = [], []
    for arg in argv:
        if arg == SEPARATOR:
            commands.append(current)
            current = []
        else:
            current.append(arg)
    return commands + [current]


def run(module, args):
    """Runs one binary as `python -m module args...`; returns its exit status."""
    defined_before = set(flags.FLAGS)
    sys.argv = [module] + args
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    for name in set(flags.FLAGS) - defined_before:  # this binary's own flags
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    return status


if __name__ == "__main__":
    for command in command_lines(sys.argv[1:]):
        status = run(command[0], command[1:])
        if status:
            sys.exit(status)
