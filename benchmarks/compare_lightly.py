"""keras_ssl vs lightly: the SimCLR training step, side by side on this CPU, in one run.

    .venv/bin/python benchmarks/compare_lightly.py            # builds build/lightly-venv on first use
    .venv/bin/python benchmarks/compare_lightly.py --encoders=small_cnn --rounds=3

For each (encoder, dtype) it runs, back to back and `--rounds` times over,
  * keras_ssl with LARS (the default optimizer) and with SGD (lightly's):
    `benchmarks/simclr_throughput.py --nopipeline` (one fixed batch of views),
    and with LARS fed by the real input pipeline (Fashion-MNIST -> shuffle ->
    two augmented views per image, `--pipeline`), to show it keeps up;
  * lightly: `benchmarks/lightly_reference/simclr_step.py` in a throw-away
    virtualenv holding PyTorch and lightly (`pip install lightly`; never a
    dependency of keras_ssl), with the same encoder, the same 2-layer
    projection head with BN, NT-Xent and batch size;
then prints one Markdown table: the best images/s of each (both views
counted), the ratio keras_ssl / lightly, the pipeline's cost, the share of the CPU's matmul rate
(measured in the same run by `benchmarks/cpu_matmul_peak.py`), and the CPU
model with its flags. bfloat16 rows are run only where the CPU has native
bfloat16 (AVX512-BF16/AMX), unless `--dtypes=float32,bfloat16` asks.

Encoders: `small_cnn` at 28x28x1, batch 256 (the demo's); `resnet18` with the
CIFAR stem at 32x32x3, batch 64 (lightly's CIFAR ResNet-18).

A plain `pip install lightly` on Linux brings PyTorch's CUDA build (several GB;
it runs on the CPU all the same). For the CPU build pass pip's own options, e.g.
`--lightly_spec="--extra-index-url https://download.pytorch.org/whl/cpu lightly"`.
"""

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHAPES = {"small_cnn": (28, 1, 256), "resnet18": (32, 3, 64)}  # image size, channels, batch
_VALUE = re.compile(r"([a-z_0-9]+)=(\S+)")


def ensure_venv(venv, spec):
    """The lightly virtualenv, created and filled on first use."""
    python = os.path.join(venv, "bin", "python")
    ok = os.path.exists(python) and subprocess.run(
        [python, "-c", "import lightly, torch"], capture_output=True).returncode == 0
    if not ok:
        print(f"building {venv} with `pip install {' '.join(spec)}` (PyTorch: a large download)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *spec], check=True)
    return python


def run(cmd, env=None):
    """Runs a benchmark command; returns the `name=value` numbers it printed."""
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    values = {}
    for key, value in _VALUE.findall(out.stdout):
        try:
            values[key] = float(value)
        except ValueError:
            values[key] = value
    return values, out.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--venv", default=os.path.join(REPO, "build", "lightly-venv"))
    p.add_argument("--lightly_spec", default="lightly", help="pip requirement(s) for the lightly side, space-separated")
    p.add_argument("--encoders", default="small_cnn,resnet18", help=f"comma-separated, of {sorted(SHAPES)}")
    p.add_argument("--dtypes", default="auto", help="auto (float32, + bfloat16 where native) or a list of "
                                                    "float32,bfloat16")
    p.add_argument("--rounds", type=int, default=2, help="back-to-back repetitions; the best of each is reported")
    p.add_argument("--steps", type=int, default=0, help="timed steps (default: 10 small_cnn, 5 resnet18)")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 0:
        p.error("--rounds must be >= 1 and --steps >= 0")
    if any(e not in SHAPES for e in args.encoders.split(",")):
        p.error(f"--encoders must be a comma-separated list of {sorted(SHAPES)}")
    if args.dtypes != "auto" and any(d not in ("float32", "bfloat16") for d in args.dtypes.split(",")):
        p.error("--dtypes must be auto or a comma-separated list of float32, bfloat16")

    sys.path.insert(0, REPO)
    from keras_ssl.precision import cpu_summary, native_16bit

    venv_python = ensure_venv(args.venv, args.lightly_spec.split())
    dtypes = (["float32"] + (["bfloat16"] if native_16bit("mixed_bfloat16") else [])
              if args.dtypes == "auto" else args.dtypes.split(","))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    peak, _ = run([sys.executable, os.path.join(HERE, "cpu_matmul_peak.py")], env)
    versions = run([venv_python, "-c", "import torch, lightly; print('torch', torch.__version__, 'lightly', "
                                       "lightly.__version__, 'threads', torch.get_num_threads())"])[1].strip()
    rows, tf_version = [], "?"
    for encoder in args.encoders.split(","):
        size, channels, batch = SHAPES[encoder]
        steps = args.steps or (10 if encoder == "small_cnn" else 5)
        common = [f"--encoder={encoder}", f"--image_size={size}", f"--channels={channels}", f"--batch={batch}",
                  f"--steps={steps}"]
        for dtype in dtypes:
            policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
            best = {"lars": 0.0, "sgd": 0.0, "pipeline": 0.0, "lightly": 0.0}
            gflops_per_image = None
            for _ in range(args.rounds):
                for name, optimizer, pipeline in (("lars", "lars", "--nopipeline"), ("sgd", "sgd", "--nopipeline"),
                                                  ("pipeline", "lars", "--pipeline")):
                    values, _ = run([sys.executable, os.path.join(HERE, "simclr_throughput.py"), *common,
                                     "--warmup=3", pipeline, f"--dtype_policy={policy}",
                                     f"--optimizer={optimizer}"], env)
                    best[name] = max(best[name], values["images_per_second"])
                    tf_version = values.get("tensorflow", tf_version)
                    if name == "sgd":
                        gflops_per_image = values["achieved_gflops"] / values["images_per_second"]
                values, _ = run([venv_python, os.path.join(HERE, "lightly_reference", "simclr_step.py"), *common,
                                 "--warmup=2", f"--dtype={dtype}"], env)
                best["lightly"] = max(best["lightly"], values["images_per_second"])
            ceiling = peak[f"matmul_gflops_{'float32' if dtype == 'float32' else 'bfloat16'}"]
            rows.append((encoder, dtype, batch, best, gflops_per_image, ceiling))

    print()
    print(f"CPU: {cpu_summary()}")
    print(f"keras_ssl: TensorFlow {tf_version}; lightly side: {versions}; "
          f"matmul ceiling: {peak['matmul_gflops_float32']:.0f} GFLOP/s float32, "
          f"{peak['matmul_gflops_bfloat16']:.0f} bfloat16; best of {args.rounds} rounds; {time.strftime('%Y-%m-%d')}")
    print()
    print("| encoder | dtype | batch | keras_ssl LARS | keras_ssl SGD | lightly SGD | LARS / lightly "
          "| SGD / lightly | keras_ssl LARS + input pipeline (vs without) | keras_ssl SGD, share of matmul ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for encoder, dtype, batch, best, gflops_per_image, ceiling in rows:
        share = 100 * best["sgd"] * gflops_per_image / ceiling
        print(f"| {encoder} | {dtype} | {batch} | {best['lars']:.1f} | {best['sgd']:.1f} | {best['lightly']:.1f} "
              f"| {best['lars'] / best['lightly']:.2f}x | {best['sgd'] / best['lightly']:.2f}x "
              f"| {best['pipeline']:.1f} ({100 * (best['pipeline'] / best['lars'] - 1):+.0f}%) | {share:.0f}% |")
    print("(images/s, both views counted)")


if __name__ == "__main__":
    main()
