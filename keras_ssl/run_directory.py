"""A run directory on disk: its config, epoch checkpoints, lock and atomic saves.

A run directory holds
  config.json                 the run's config (written once the data and model are checked)
  .lock                       held by the training process (fcntl; released when it dies)
  checkpoints/epoch_NNNN.weights.h5   model + optimizer state after each epoch
  logs/                       TensorBoard
  encoder.keras               the trained encoder (what evaluation/export use)
  model.keras                 the whole method model (encoder, heads, optimizer)
  training.json               final metrics, wall time, throughput
  diverged.json               only after a run stopped on divergence: the epoch and why
Every file is written through a temporary name and a rename, so a killed run
never leaves a half-written one; a rerun resumes from the newest checkpoint.
"""

import contextlib
import glob
import json
import os
import re
import shutil

import numpy as np

from keras_ssl.config import TrainConfig
from keras_ssl.errors import UserError

_CHECKPOINT = re.compile(r"epoch_(\d+)\.weights\.h5$")
# Keys that may change between a run and its resumption: the directory's own spelling
# (trailing slash, ./, a moved directory), and the learning rate, so that a diverged
# run can be continued from its last good checkpoint at a lower rate.
RESUMABLE_KEYS = {"epochs", "verbose", "keep_checkpoints", "model_dir", "learning_rate"}
# Written when a run stops on divergence (epoch, why, the message), removed when a rerun finishes.
DIVERGED_FILE = "diverged.json"


def diverged_run(model_dir):
    """The stored divergence of the run in `model_dir` (a dict), or None."""
    path = os.path.join(model_dir, DIVERGED_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def record_divergence(model_dir, epoch, why, message):
    """Writes `diverged.json`, so evaluate/export of the directory name the cause."""
    write_json(os.path.join(model_dir, DIVERGED_FILE), {"epoch": epoch, "why": why, "message": message})


def clear_divergence(model_dir):
    """Removes `diverged.json` (a rerun went through)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(model_dir, DIVERGED_FILE))


def write_json(path, obj):
    from keras_ssl.evaluation import write_json_atomic

    write_json_atomic(path, obj)


def read_config(model_dir):
    """The `TrainConfig` stored in a run directory."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{model_dir} holds no training run (no config.json); train first or fix --model_dir")
    try:
        with open(path) as f:
            stored = json.load(f)
    except ValueError as e:
        raise UserError(f"{path} is damaged ({e}); it cannot be rebuilt: start a new --model_dir") from None
    if not isinstance(stored, dict):
        raise UserError(f"{path} is damaged (not a JSON object); start a new --model_dir")
    return TrainConfig.from_dict(stored, strict=False)


def finished_run(model_dir):
    """`(config, encoder_path)` of a finished training run in `model_dir`, or a `UserError`
    naming why it is not one (no run, diverged, not finished)."""
    config = read_config(model_dir)
    encoder_path = os.path.join(model_dir, "encoder.keras")
    if not os.path.isfile(encoder_path):
        diverged = diverged_run(model_dir)
        if diverged:
            raise UserError(f"the run in {model_dir} stopped: {diverged.get('message', 'it diverged')}")
        raise UserError(f"{encoder_path} not found; the run has not finished training")
    return config, encoder_path


def check_resume(config):
    """A `UserError` when `config.model_dir` holds a run with other settings
    (beyond `RESUMABLE_KEYS`)."""
    path = os.path.join(config.model_dir, "config.json")
    if not os.path.isfile(path):
        return
    stored = read_config(config.model_dir).to_dict()
    wanted = config.to_dict()
    diff = sorted(k for k in wanted if k not in RESUMABLE_KEYS and stored.get(k) != wanted[k])
    if diff:
        k = diff[0]
        raise UserError(f"{config.model_dir} holds a run with {k}={stored.get(k)!r}, not {wanted[k]!r} "
                        f"(differs in {', '.join(diff)}); use a new --model_dir to start another run")


def latest_checkpoint(model_dir, epoch=None):
    """(epoch, path) of the newest epoch checkpoint in `model_dir/checkpoints`
    (or of the one for `epoch`), or (0, None)."""
    found = []
    for path in glob.glob(os.path.join(model_dir, "checkpoints", "epoch_*.weights.h5")):
        m = _CHECKPOINT.search(path)
        if m and (epoch is None or int(m.group(1)) == epoch):
            found.append((int(m.group(1)), path))
    return max(found) if found else (0, None)


def epoch_checkpoint_callback(model_dir, keep):
    import keras

    from keras_ssl.health import describe_nonfinite, nonfinite_variables

    class EpochCheckpoint(keras.callbacks.Callback):
        """Saves model + optimizer state after each epoch, atomically, keeping `keep`.

        An epoch whose logged metrics or weights hold NaN/Inf is not saved:
        training stops, `diverged` says why, and the good checkpoints stay (the
        oldest is removed only after a new good one is in place)."""

        diverged = None
        no_space = None

        def on_epoch_end(self, epoch, logs=None):
            bad_logs = {k: float(np.ravel(v)[0]) for k, v in (logs or {}).items()
                        if not np.all(np.isfinite(np.asarray(v, dtype=np.float64)))}
            bad_weights = nonfinite_variables(self.model)
            if bad_logs or bad_weights:
                reasons = [", ".join(f"{k}={v}" for k, v in bad_logs.items())] if bad_logs else []
                reasons += [describe_nonfinite(bad_weights)] if bad_weights else []
                self.diverged = (epoch + 1, "; ".join(reasons))
                self.model.stop_training = True
                return
            directory = os.path.join(model_dir, "checkpoints")
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"epoch_{epoch + 1:04d}.weights.h5")
            tmp = os.path.join(directory, f".tmp-{os.getpid()}.weights.h5")
            # HDF5 can crash the process (SIGSEGV) when the disk fills mid-write: check first.
            variables = list(self.model.weights) + list(getattr(self.model.optimizer, "variables", []))
            needed = int(1.2 * sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in variables)) + (8 << 20)
            free = shutil.disk_usage(directory).free
            if free < needed:
                self.no_space = (f"no space for the epoch {epoch + 1} checkpoint in {directory}: about "
                                 f"{needed >> 20} MB needed, {free >> 20} MB free; free some space, then rerun to "
                                 "resume from the last checkpoint")
                self.model.stop_training = True
                return
            try:
                self.model.save_weights(tmp, overwrite=True)
                os.replace(tmp, path)
            except BaseException:  # a full disk, Ctrl-C or SIGTERM mid-write: no half-written file is left
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
            ckpts = sorted(glob.glob(os.path.join(directory, "epoch_*.weights.h5")))
            for old in ckpts[:-keep]:
                os.remove(old)

    return EpochCheckpoint()


def worker_dir(model_dir, strategy):
    """Where this process keeps its checkpoints: the run directory for the chief,
    a scratch directory `<model_dir>/.worker_<type>_<id>` for the other workers
    of a multi-worker run (removed when training ends)."""
    from keras_ssl.distribute import is_chief, task_of

    if is_chief(strategy):
        return model_dir
    task_type, task_id = task_of(strategy)
    return os.path.join(model_dir, f".worker_{task_type}_{task_id}")


def resume_epoch(config, strategy, own_dir):
    """The epoch every worker restarts from, and this worker's checkpoint for it.

    Each worker keeps its own atomic epoch checkpoints (Keras's
    BackupAndRestore keeps one unversioned backup per worker, so a group
    killed between two workers' saves would restart from different epochs);
    a worker without its own (its scratch is removed after a finished run)
    also sees the chief's, when the run directory is shared. The workers agree
    on the smallest latest epoch among them; a finished chief run (latest
    epoch >= `epochs`) is taken as it is.
    """
    from keras_ssl.distribute import gather_from_workers, is_chief

    dirs = [own_dir] if own_dir == config.model_dir else [own_dir, config.model_dir]
    latest = max(latest_checkpoint(d)[0] for d in dirs)
    everyone = gather_from_workers(strategy, [latest, int(is_chief(strategy))])  # one row per replica
    if any(chief and epoch >= config.epochs for epoch, chief in everyone):  # the chief has finished
        return config.epochs, latest_checkpoint(own_dir)[1] if is_chief(strategy) else None
    epoch, most = min(e for e, _ in everyone), max(e for e, _ in everyone)
    if most == 0:
        return 0, None
    paths = [p for p in (latest_checkpoint(d, epoch)[1] for d in dirs) if p]
    if not paths:
        raise UserError(f"cannot resume: the workers' latest checkpoints are at epochs {epoch} to {most} and "
                        f"{', '.join(d + '/checkpoints' for d in dirs)} has no epoch_{epoch:04d}.weights.h5 "
                        "(a worker lost its checkpoints, or --keep_checkpoints is too low); "
                        "start a new --model_dir")
    return epoch, paths[0]


def save_keras_atomic(model, path):
    """`model.save(path)` through a temporary file and rename."""
    tmp = f"{path[:-len('.keras')]}.tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def run_directory_lock(directory):
    """Holds an exclusive lock on `directory` (a `.lock` file, `fcntl.flock`: released
    by the kernel when the process dies, so a killed run never leaves it locked);
    a second run on the same directory gets a `UserError`. Under the lock, the
    temporary files a killed run left (`*.tmp-PID*`) are removed."""
    import fcntl

    path = os.path.join(directory, ".lock")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{directory} is in use by a running keras-ssl-train ({owner}); wait for it to finish "
                        "or use another --model_dir") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        for pattern in ("*.tmp-*", os.path.join("checkpoints", ".tmp-*")):
            for stale in glob.glob(os.path.join(directory, pattern)):
                if os.path.isfile(stale):
                    os.remove(stale)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
