"""MultiWorkerMirroredStrategy on 127.0.0.1: fit() in user code, the launcher, the
chief's export, and a killed worker group resuming (issue 6)."""

import glob
import json
import os
import signal
import subprocess
import textwrap
import time

import numpy as np

from keras_ssl.bin.launch_local import free_ports, tf_config
from tests.helpers import BLOCK_KERAS
from tests.test_end_to_end import PY, _run

# What a user writes: the strategy from TF_CONFIG, the model in its scope, plain fit().
USER_FIT = textwrap.dedent('''
    import os, sys
    import numpy as np, keras, tensorflow as tf
    from keras_ssl import distribute
    from keras_ssl.data import load_source, simclr_views
    from keras_ssl.data.sampling import pk_batches
    from keras_ssl.encoders import build_encoder
    from keras_ssl.heads import projection_head
    from keras_ssl.models import OnlineTriplet, SimCLR

    out = sys.argv[1]
    strategy = distribute.get_strategy("multi_worker" if "TF_CONFIG" in os.environ else "default")
    digits = load_source("digits")
    split = digits.train.take(400)
    for method in ("triplet", "simclr"):  # one process (and one cluster) for both: start-up is most of the cost
        keras.utils.set_random_seed(0)
        with strategy.scope():
            encoder = build_encoder("small_cnn", digits.image_shape, 0.25)
            if method == "triplet":
                model = OnlineTriplet(encoder, embedding_dim=16, mining="semi_hard")
                data = pk_batches(split, 4, 4, seed=0)
            else:
                model = SimCLR(encoder, projection_head(32, 32, 16), temperature=0.5, num_classes=10)
                data = simclr_views(split, 16, "fashion_mnist", seed=0)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        hist = model.fit(distribute.shard_by_data(data), epochs=2, steps_per_epoch=2, verbose=0)
        np.savez(f"{out}_{method}.npz", loss=np.ravel(hist.history["loss"]),
                 **{f"w{i}": v.numpy() for i, v in enumerate(model.weights)})
''')


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _weights(path):
    npz = np.load(path)
    return npz["loss"], [npz[f"w{i}"] for i in range(len(npz.files) - 1)]


def test_user_fit_on_two_workers_matches_one_device(tmp_path):
    """Online triplet mining (labels gathered across workers) and SimCLR (negatives
    gathered, sync BN) in the user's own `fit()` on two workers: identical weights on
    both, and what one device gets from the same global batches."""
    script = tmp_path / "user_fit.py"
    script.write_text(USER_FIT)
    ports = free_ports(2)
    procs = [subprocess.Popen([PY, str(script), str(tmp_path / f"worker{i}")], cwd=tmp_path,
                              env=_env(TF_CONFIG=tf_config(ports, i)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    single = subprocess.run([PY, str(script), str(tmp_path / "single")], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=300)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    for method in ("triplet", "simclr"):
        loss0, w0 = _weights(tmp_path / f"worker0_{method}.npz")
        loss1, w1 = _weights(tmp_path / f"worker1_{method}.npz")
        loss_single, w_single = _weights(tmp_path / f"single_{method}.npz")
        for a, b in zip(w0, w1):  # the workers end with identical weights
            np.testing.assert_array_equal(a, b, err_msg=method)
        # and with what one device gets from the same global batches (sync BN = BN over the global batch)
        np.testing.assert_allclose(loss0, loss_single, rtol=1e-4, err_msg=method)
        for a, b in zip(w0, w_single):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=method)


def _launch(args, cwd, check=True):
    proc = subprocess.run([PY, "-m", "keras_ssl.bin.launch_local", "--workers=2", "--"] + args, cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_launcher_trains_and_only_the_chief_writes(tmp_path):
    model_dir = tmp_path / "run"
    proc = _launch(["--method=triplet", "--dataset=digits", "--classes_per_batch=4", "--images_per_class=4",
                    "--embedding_dim=16", "--augment=none", "--width_multiplier=0.25", "--epochs=1",
                    "--steps_per_epoch=3", f"--model_dir={model_dir}", "--verbose=2"], tmp_path)
    assert "[worker 0] trained 1 epoch(s)" in proc.stdout
    assert "[worker 1] worker finished 1 epoch(s)" in proc.stdout
    assert sorted(os.listdir(model_dir)) == [".lock", "checkpoints", "config.json", "encoder.keras", "logs",
                                             "model.keras", "training.json"]  # no worker scratch left behind
    training = json.load(open(model_dir / "training.json"))
    assert training["replicas"] == 2 and training["chief"]

    _run(["keras_ssl.bin.export", f"--model_dir={model_dir}", f"--export_root={tmp_path / 'export'}"], tmp_path)
    serve = BLOCK_KERAS + textwrap.dedent('''
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        e = m.signatures["embed_pixels"](pixels=tf.zeros([3, 8, 8, 1], tf.uint8))["embedding"].numpy()
        print(json.dumps({"shape": list(e.shape), "norms": np.linalg.norm(e, axis=1).tolist()}))
    ''')
    out = subprocess.run([PY, "-c", serve, glob.glob(str(tmp_path / "export" / "*" / "*"))[0]], capture_output=True,
                         text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [3, 16]
    np.testing.assert_allclose(result["norms"], 1.0, rtol=1e-4)


def _train_pids(model_dir):
    """{worker index: pid} of the training processes writing `model_dir`."""
    found = {}
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            cmdline = open(f"{proc}/cmdline", "rb").read().decode(errors="replace")
            if "keras_ssl.bin.train" not in cmdline or str(model_dir) not in cmdline:
                continue
            environ = open(f"{proc}/environ", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith("TF_CONFIG="):
                found[json.loads(item[len("TF_CONFIG="):])["task"]["index"]] = int(proc.split("/")[-1])
    return found


def test_killed_worker_group_resumes_from_last_epoch(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--dataset=digits", "--width_multiplier=0.5", "--batch_size=64", "--epochs=4", "--steps_per_epoch=15",
            f"--model_dir={model_dir}", "--verbose=2"]
    launcher = subprocess.Popen([PY, "-m", "keras_ssl.bin.launch_local", "--workers=2", "--"] + args, cwd=tmp_path,
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (model_dir / "checkpoints" / "epoch_0001.weights.h5").exists():
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[1][-3000:]
        time.sleep(0.05)
    os.kill(_train_pids(model_dir)[1], signal.SIGKILL)  # worker 1 dies after epoch 1
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode != 0 and "worker 1 was killed by signal 9" in err, err[-3000:]
    done = max(int(os.path.basename(p)[6:10]) for p in glob.glob(str(model_dir / "checkpoints" / "epoch_*.weights.h5")))
    assert 1 <= done < 4, "the kill should land mid-run"
    assert not (model_dir / "encoder.keras").exists()

    # SIGTERM to the launcher reaches its workers: none is left training (issue 13).
    launcher = subprocess.Popen([PY, "-m", "keras_ssl.bin.launch_local", "--workers=2", "--"] + args, cwd=tmp_path,
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(_train_pids(model_dir)) < 2:
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[1][-3000:]
        time.sleep(0.05)
    workers = list(_train_pids(model_dir).values())
    time.sleep(3)  # into TensorFlow's start-up
    launcher.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = launcher.communicate(timeout=60)
    gone = time.time() - sent
    assert launcher.returncode == 128 + signal.SIGTERM and "stopping the workers" in err, err[-3000:]
    assert gone < 10 and not [pid for pid in workers if os.path.exists(f"/proc/{pid}")], gone

    # the stopped group may have finished an epoch before the signal reached it (workers now stop
    # cleanly on SIGTERM, keeping completed epochs): the restart resumes from the latest checkpoint
    done = max(int(os.path.basename(p)[6:10]) for p in glob.glob(str(model_dir / "checkpoints" / "epoch_*.weights.h5")))
    proc = _launch(args, tmp_path)  # restart the whole group
    assert f"resuming from {model_dir}/checkpoints/epoch_{done:04d}.weights.h5 (epoch {done})" in proc.stdout
    training = json.load(open(model_dir / "training.json"))
    assert training["epochs_run"] == 4 - done
    assert sorted(os.listdir(model_dir / "checkpoints"))[-1] == "epoch_0004.weights.h5"
    assert not glob.glob(str(model_dir / ".worker_*"))


def test_multi_worker_mistakes_fail_clearly(tmp_path):
    proc = _run(["keras_ssl.bin.train", "--dataset=digits", "--strategy=multi_worker", f"--model_dir={tmp_path}"],
                tmp_path, check=False)
    assert proc.returncode == 2 and "needs the TF_CONFIG environment variable" in proc.stderr
    env = _env(TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}')
    proc = subprocess.run([PY, "-m", "keras_ssl.bin.train", "--dataset=digits", "--strategy=multi_worker",
                           f"--model_dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not in its cluster" in proc.stderr
    proc = _launch(["--strategy=mirrored"], tmp_path, check=False)
    assert proc.returncode == 2 and "sets --strategy=multi_worker itself" in proc.stderr
    proc = _run(["keras_ssl.bin.train", "--dataset=digits", "--strategy=mirrored", "--cpu_replicas=2",
                 "--jit_compile", f"--model_dir={tmp_path}"], tmp_path, check=False)
    assert proc.returncode == 2 and "--jit_compile fails under a multi-replica strategy on CPU" in proc.stderr


def _stage_workers(tmp_path, parent, model_dir, *extra):
    """Two workers (TF_CONFIG on 127.0.0.1) training the two-stage toy (tests/toy_methods.py)
    on a finished rotation run; [(returncode, stdout, stderr)] per worker."""
    ports = free_ports(2)
    args = [PY, "-m", "tests.run_binary", "keras_ssl.bin.train", "--method=toy_cluster_targets",
            f"--parent_run={parent}", "--dataset=digits", "--augment=none", "--batch_size=16", "--epochs=1",
            "--steps_per_epoch=2", "--width_multiplier=0.25", "--optimizer=adam", "--learning_rate=1e-3",
            "--lr_scaling=none", "--warmup_epochs=0", "--dtype_policy=float32", "--strategy=multi_worker",
            f"--model_dir={model_dir}", "--verbose=0", *extra]
    procs = [subprocess.Popen(args, cwd=os.path.dirname(os.path.dirname(__file__)),
                              env=_env(TF_CONFIG=tf_config(ports, i)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    return results


def test_a_stage_on_two_workers_prepares_the_same_artefacts_and_refuses_different_ones(tmp_path):
    """Every worker runs the stage's `prepare` (only the chief writes prepared.npz): the
    workers compare digests, train on equal targets, and a prepare that differs between
    workers stops both with one line instead of training each on other targets."""
    from keras_ssl.stages import artefacts_digest
    from tests.helpers import smoke_parent_run

    parent = smoke_parent_run("rotation", tmp_path)
    model_dir = tmp_path / "stage"
    for code, out, err in _stage_workers(tmp_path, parent, model_dir):
        assert code == 0, err[-3000:]
    with np.load(model_dir / "prepared.npz") as stored:
        written = {name: stored[name] for name in ("centroids", "targets")}
    assert artefacts_digest(written) != artefacts_digest({**written, "targets": (written["targets"] + 1) % 4})
    assert sorted(os.listdir(model_dir)) == [".lock", "checkpoints", "config.json", "encoder.keras", "logs",
                                             "model.keras", "prepared.npz", "training.json"]

    results = _stage_workers(tmp_path, parent, tmp_path / "differ", "--worker_dependent")
    for code, out, err in results:
        assert code == 2, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "the workers prepared different artefacts for method toy_cluster_targets" \
            in lines[0] and "seed every random choice" in lines[0], err[-3000:]
    assert not os.path.exists(tmp_path / "differ" / "checkpoints")
