"""Where the SimCLR step's time goes on a CPU: oneDNN's primitives against the whole step.

    .venv/bin/python benchmarks/onednn_breakdown.py --encoder=resnet18 --dtype_policy=mixed_bfloat16
    .venv/bin/python benchmarks/onednn_breakdown.py --encoder=small_cnn --dtype_policy=float32

Runs `benchmarks/simclr_throughput.py --nopipeline` twice with the same settings:
once as it is (the step time), once with `ONEDNN_VERBOSE=1`, which makes oneDNN
print one line per primitive it executes, with its kind, implementation,
shapes and milliseconds. It sums those per (kind, propagation) and per
implementation over the timed steps and prints them beside the step time
measured without logging. The log is cut into steps at the first forward
convolution of each step; the warm-up steps (one-time weight reorders) and
the last step (which has no next step to end it) are left out, so each of
the `steps - 1` cycles counted holds one step's primitives. What the primitives do not cover is
TensorFlow's own work between them: casts, element-wise ops that oneDNN
does not run, the optimizer's updates, and the executor's scheduling. Two
primitives may run at once (TensorFlow's inter-op threads), so their sum can
exceed the step; `TF_NUM_INTEROP_THREADS=1` in the environment prevents that
(the header line says which was used).

With `--lightly_python` (the python of a virtualenv holding PyTorch and
lightly, e.g. `build/lightly-venv/bin/python` made by compare_lightly.py) it
does the same for lightly's step (`lightly_reference/simclr_step.py`), whose
convolutions PyTorch also runs with oneDNN; `--channels_last` gives that
step the NHWC memory format.

Encoders and batch sizes as in `benchmarks/compare_lightly.py`: `small_cnn`
at 28x28x1, batch 256; `resnet18` (CIFAR stem) at 32x32x3, batch 64.
"""

import argparse
import collections
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHAPES = {"small_cnn": (28, 1, 256), "resnet18": (32, 3, 64)}  # image size, channels, batch
_STEP_MS = re.compile(r"step_ms=([0-9.]+)")


def throughput(args, env, lightly=False):
    size, channels, batch = SHAPES[args.encoder]
    common = [f"--encoder={args.encoder}", f"--image_size={size}", f"--channels={channels}", f"--batch={batch}",
              f"--steps={args.steps}", f"--warmup={args.warmup}"]
    if lightly:
        dtype = {"float32": "float32", "mixed_bfloat16": "bfloat16"}[args.dtype_policy]
        cmd = [args.lightly_python, os.path.join(HERE, "lightly_reference", "simclr_step.py"), *common,
               f"--dtype={dtype}"] + (["--channels_last"] if args.channels_last else [])
    else:
        cmd = [sys.executable, os.path.join(HERE, "simclr_throughput.py"), *common, "--nopipeline",
               f"--dtype_policy={args.dtype_policy}", f"--optimizer={args.optimizer}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def primitive_times(label, log, warmup, steps):
    """{(kind, propagation, implementation): [calls, ms]} over `steps - 1` timed steps' oneDNN `exec` lines."""
    calls = []
    for line in log.splitlines():
        if not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        # oneDNN 3.x: onednn_verbose,v1,[timestamp,]primitive,exec,cpu,KIND,IMPL,PROP,...,MS
        fields = line.split(",")
        at = fields.index("exec")
        if fields[at - 1] != "primitive":  # e.g. graph-API lines
            continue
        try:
            calls.append((fields[at + 2], fields[at + 4], fields[at + 3], float(fields[-1])))
        except (IndexError, ValueError):
            continue
    if not calls:
        sys.exit(f"error: {label}: oneDNN printed no `exec` lines (is its oneDNN on? for TensorFlow: "
                 "TF_ENABLE_ONEDNN_OPTS=1)")
    forward = [i for i, (kind, propagation, _, _) in enumerate(calls)
               if kind == "convolution" and propagation == "forward_training"]
    runs = warmup + steps
    if not forward or len(forward) % runs:
        sys.exit(f"error: {label}: {len(forward)} forward convolutions in the log of {runs} steps; "
                 "cannot cut it into steps")
    per_step = len(forward) // runs
    start, stop = forward[warmup * per_step], forward[(runs - 1) * per_step]
    totals = collections.defaultdict(lambda: [0, 0.0])
    for kind, propagation, implementation, ms in calls[start:stop]:
        entry = totals[(kind, propagation, implementation)]
        entry[0] += 1
        entry[1] += ms
    return totals


def report(label, step_ms, totals, steps, top):
    per_step = sum(ms for _, ms in totals.values()) / steps
    if per_step <= 0:
        sys.exit(f"error: {label}: oneDNN's log gives no time")
    print(f"\n{label}: step (no logging) {step_ms:.1f} ms; oneDNN primitives {per_step:.1f} ms per step "
          f"({100 * per_step / step_ms:.0f}% of the step); outside them: {step_ms - per_step:.1f} ms")
    by_kind = collections.defaultdict(float)
    for (kind, propagation, _), (_, ms) in totals.items():
        by_kind[f"{kind} {propagation}"] += ms
    print("\n| primitive, propagation | ms per step | share of primitive time |\n|---|---|---|")
    for name, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {ms / steps:.1f} | {100 * ms / steps / per_step:.0f}% |")
    print("\n| primitive | implementation | propagation | calls per step | ms per step |\n|---|---|---|---|---|")
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])[:top]
    for (kind, propagation, implementation), (calls, ms) in ranked:
        print(f"| {kind} | {implementation} | {propagation} | {calls / steps:.1f} | {ms / steps:.1f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="small_cnn", choices=sorted(SHAPES))
    p.add_argument("--dtype_policy", default="auto", choices=["auto", "float32", "mixed_bfloat16"])
    p.add_argument("--optimizer", default="lars", choices=["lars", "sgd"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=12, help="implementations listed")
    p.add_argument("--lightly_python", default="", help="also profile lightly's step with this python")
    p.add_argument("--channels_last", action="store_true", help="lightly's step in the NHWC memory format")
    args = p.parse_args()
    if args.steps < 2 or args.warmup < 1:
        p.error("--steps must be >= 2 and --warmup >= 1")
    if args.channels_last and not args.lightly_python:
        p.error("--channels_last applies to lightly's step: give --lightly_python too")
    if args.lightly_python:
        args.lightly_python = os.path.abspath(args.lightly_python)
    sys.path.insert(0, REPO)
    from keras_ssl.precision import cpu_summary, resolve_dtype_policy

    args.dtype_policy = resolve_dtype_policy(args.dtype_policy)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    print(f"CPU: {cpu_summary()}; encoder={args.encoder} dtype_policy={args.dtype_policy} "
          f"TF_NUM_INTEROP_THREADS={os.environ.get('TF_NUM_INTEROP_THREADS', 'default')}")
    sides = [("keras_ssl (" + args.optimizer.upper() + ")", False)]
    if args.lightly_python:
        sides.append(("lightly (SGD" + (", channels_last)" if args.channels_last else ")"), True))
    for label, lightly in sides:
        found = _STEP_MS.search(throughput(args, env, lightly))
        if not found:
            sys.exit(f"error: {label}: the step printed no step_ms=")
        log = throughput(args, dict(env, ONEDNN_VERBOSE="1"), lightly)
        report(label, float(found.group(1)), primitive_times(label, log, args.warmup, args.steps), args.steps - 1,
               args.top)


if __name__ == "__main__":
    main()
