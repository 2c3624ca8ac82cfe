"""Step time of the demo SimCLR config: 1 process vs 2 logical CPU replicas vs 2 workers on 127.0.0.1.

    python benchmarks/multi_worker_overhead.py --steps=30 --epochs=3

All three share this machine's cores, so this measures what multi-replica and
multi-worker cost (all-reduce of the gradients, all_gather of the negatives,
the gRPC ring between processes), not a speed-up. Steady state: the ms/step
Keras prints for the last epoch (the first one includes tracing).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

FLAGFILE = os.path.join(os.path.dirname(__file__), "..", "flags", "simclr_fashion_mnist_demo.cfg")


def _ms_per_step(output):
    found = re.findall(r"(\d+)/\1 - \S+ - (\d+(?:\.\d+)?)(ms|s)/step", output)
    if not found:
        raise RuntimeError(f"no epoch line in:\n{output[-3000:]}")
    _, value, unit = found[-1]
    return float(value) * (1000.0 if unit == "s" else 1.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    common = [f"--flagfile={FLAGFILE}", f"--steps_per_epoch={args.steps}", f"--epochs={args.epochs}",
              f"--batch_size={args.batch}", "--verbose=2"]
    setups = {
        "1 process, 1 replica": [sys.executable, "-m", "keras_ssl.bin.train"],
        "1 process, 2 logical CPU replicas (mirrored)": [sys.executable, "-m", "keras_ssl.bin.train",
                                                         "--strategy=mirrored", "--cpu_replicas=2"],
        "2 workers on 127.0.0.1 (multi_worker)": [sys.executable, "-m", "keras_ssl.bin.launch_local",
                                                  "--workers=2", "--"],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, command) in enumerate(setups.items()):
            proc = subprocess.run(command + common + [f"--model_dir={tmp}/run{i}"], capture_output=True, text=True,
                                  env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            if proc.returncode:
                raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
            ms = _ms_per_step(proc.stdout)
            rows.append((name, ms, 2 * args.batch / ms * 1000.0))
    base = rows[0][1]
    print(f"| setup (demo SimCLR, small_cnn, batch {args.batch}, mixed_bfloat16) | step | images/s | vs 1 replica |")
    print("|---|---|---|---|")
    for name, ms, ips in rows:
        print(f"| {name} | {ms:.0f} ms | {ips:,.0f} | {ms / base:.2f}x time |")


if __name__ == "__main__":
    main()
