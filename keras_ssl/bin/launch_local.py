"""keras-ssl-launch-local: a multi-worker run on this machine (127.0.0.1).

    keras-ssl-launch-local --workers=2 -- --flagfile=flags/simclr_fashion_mnist_demo.cfg \
        --model_dir=runs/two_workers

Starts N `keras-ssl-train --strategy=multi_worker` processes, each with its own
`TF_CONFIG` naming N free loopback ports, prefixes their output with
`[worker i]`, and waits. When one worker fails the others are stopped (a
collective would otherwise wait for it forever) and the launcher exits with
the failed worker's status; running the same command again resumes the group
from the last epoch every worker finished. Worker 0 is the chief: it writes
the run directory. On one machine this measures the multi-worker overhead,
not a speed-up (the workers share the CPU).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from keras_ssl.bin.common import run_main
from keras_ssl.errors import UserError

flags.DEFINE_integer("workers", 2, "number of worker processes")
flags.DEFINE_float("grace_seconds", 5.0, "how long stopped workers get before SIGKILL")
FLAGS = flags.FLAGS


def free_ports(n):
    """`n` distinct free TCP ports on 127.0.0.1 (bound to port 0 at once, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    """The TF_CONFIG JSON for worker `index` of a loopback cluster on `ports`."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def _train_args(args):
    for arg in args:
        if arg.startswith("--strategy") and arg != "--strategy=multi_worker":
            raise UserError(f"the launcher sets --strategy=multi_worker itself; remove {arg}")
    return [a for a in args if not a.startswith("--strategy")] + ["--strategy=multi_worker"]


def _relay(stream, prefix, sink):
    for line in iter(stream.readline, ""):
        sink.write(f"{prefix}{line}")
        sink.flush()
    stream.close()


def _describe(index, returncode):
    if returncode < 0:
        return f"worker {index} was killed by signal {-returncode}"
    return f"worker {index} exited with status {returncode}"


def _stop(procs, grace):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _Stopped(Exception):
    """The launcher got SIGTERM (or SIGHUP)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise _Stopped(signum)


def launch(n, train_args, grace=5.0, out=sys.stdout, err=sys.stderr):
    """Runs `n` workers to the end; returns 0 or the first failed worker's status.

    SIGINT, SIGTERM and SIGHUP to the launcher are passed on: the workers get
    SIGTERM, then SIGKILL after `grace` seconds (a worker blocked in a
    collective cannot act on SIGTERM), and the launcher waits for them, so
    none is left training; its status is then 128 + the signal."""
    if n < 1:
        raise UserError(f"--workers must be >= 1, got {n}")
    args = _train_args(train_args)
    ports = free_ports(n)
    procs, relays = [], []
    for i in range(n):
        env = dict(os.environ, TF_CONFIG=tf_config(ports, i))
        p = subprocess.Popen([sys.executable, "-m", "keras_ssl.bin.train", *args], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        procs.append(p)
        for stream, sink in ((p.stdout, out), (p.stderr, err)):
            t = threading.Thread(target=_relay, args=(stream, f"[worker {i}] ", sink), daemon=True)
            t.start()
            relays.append(t)
    status = 0
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while None in [p.poll() for p in procs]:  # poll every one: their return codes name the failure
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                status = failed[0][1]
                print(f"{'; '.join(_describe(i, rc) for i, rc in failed)}; stopping the others", file=err, flush=True)
                _stop(procs, grace)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("interrupted; stopping the workers (rerun the same command to resume)", file=err, flush=True)
        _stop(procs, grace)
        status = 128 + signal.SIGINT
    except _Stopped as stopped:
        print(f"got signal {stopped.signum}; stopping the workers", file=err, flush=True)
        _stop(procs, grace)
        status = 128 + stopped.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for t in relays:
        t.join(5)
    if not status:
        status = next((p.returncode for p in procs if p.returncode), 0)
    return status


def main(argv):
    status = launch(FLAGS.workers, argv[1:], FLAGS.grace_seconds)
    sys.exit(128 - status if status < 0 else status)  # killed by signal N: 128 + N, as a shell reports it


def run():
    run_main(main)


if __name__ == "__main__":
    run()
