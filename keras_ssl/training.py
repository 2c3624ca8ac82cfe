"""One training run from a config: what `keras-ssl-train` does, callable from code.

    from keras_ssl.training import TrainConfig, train
    result = train(TrainConfig(dataset="digits", epochs=2, model_dir="runs/try"))

A run directory holds
  config.json                 the run's config (written once the data and model are checked)
  checkpoints/epoch_NNNN.weights.h5   model + optimizer state after each epoch
  logs/                       TensorBoard
  encoder.keras               the trained encoder (what evaluation/export use)
  model.keras                 the whole method model (encoder, heads, optimizer)
  training.json               final metrics, wall time, throughput
Re-running with the same model_dir resumes from the latest checkpoint; a
different config (other than `epochs`/`verbose`) is refused rather than mixed in.
"""

import contextlib
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import time

import numpy as np

from keras_ssl.errors import UserError
from keras_ssl.precision import POLICIES, gpu_compute_capability, resolve_dtype_policy

_CHECKPOINT = re.compile(r"epoch_(\d+)\.weights\.h5$")
# Keys that may change between a run and its resumption: the directory's own spelling
# (trailing slash, ./, a moved directory), and the learning rate, so that a diverged
# run can be continued from its last good checkpoint at a lower rate.
_RESUMABLE_KEYS = {"epochs", "verbose", "keep_checkpoints", "model_dir", "learning_rate"}
DTYPE_POLICIES = POLICIES
# The encoder a run gets when --encoder is not given, by the method's modality.
DEFAULT_ENCODERS = {"image": "small_cnn", "audio": "cpc_conv"}


@dataclasses.dataclass
class TrainConfig:
    """What every run needs; the method's own hyper-parameters are `options`.

    `options` is the method's options dataclass (e.g. `SimCLROptions`, see
    `keras_ssl.models.registry`), or a dict of its keys, or None for its
    defaults. `TrainConfig.from_dict` takes everything flat, as the flags and
    `config.json` spell it:

        TrainConfig.from_dict({"method": "siamese", "margin": 0.5, "dataset": "digits"})

    Sources of the defaults (the SimCLR-on-Fashion-MNIST long run):
    `weight_decay=1e-6`, LARS with `learning_rate=0.3` and linear scaling
    (peak 0.3 x B/256), momentum 0.9, cosine decay: SimCLR (Chen et al. 2020,
    B.9 for CIFAR-10). `warmup_epochs=2` and `batch_size=256` are ours (short runs).
    """

    model_dir: str = "runs/simclr_fashion_mnist"
    method: str = "simclr"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    image_size: int | None = None
    channels: int | None = None
    audio_seconds: float = 1.0
    train_limit: int | None = None
    encoder: str | None = None  # None: the method's modality's default, see DEFAULT_ENCODERS
    width_multiplier: float = 1.0
    cifar_stem: bool = True
    batch_size: int = 256
    epochs: int = 10
    steps_per_epoch: int | None = None
    optimizer: str = "lars"
    learning_rate: float = 0.3
    lr_scaling: str = "linear"
    warmup_epochs: float = 2.0
    weight_decay: float = 1e-6
    momentum: float = 0.9
    augment: str = "fashion_mnist"
    train_classes: str | None = None
    val_fraction: float = 0.0
    strategy: str = "default"
    cpu_replicas: int | None = None
    dtype_policy: str = "auto"  # see keras_ssl.precision.resolve_dtype_policy
    jit_compile: bool = False
    seed: int = 0
    keep_checkpoints: int = 3
    verbose: int = 1
    options: object = None

    def __post_init__(self):
        from keras_ssl.models import registry

        method = registry.get(self.method)
        if self.options is None or isinstance(self.options, dict):
            self.options = method.make_options(self.options)
        elif not isinstance(self.options, method.options):
            raise UserError(f"options for method {self.method} must be a {method.options.__name__}, "
                            f"got {type(self.options).__name__}")
        if self.encoder is None:
            self.encoder = DEFAULT_ENCODERS[method.modality]

    @property
    def augment_preset(self):
        """The augmentation preset for the batch builders: None for `augment="none"`."""
        return None if self.augment == "none" else self.augment

    @property
    def method_spec(self):
        """The registered `Method` of this run."""
        from keras_ssl.models import registry

        return registry.get(self.method)

    @classmethod
    def from_dict(cls, values, strict=True):
        """A config from flat keys (run keys and the method's option keys).

        `strict`: a key of another method's options (or no one's) is refused
        with a `UserError` naming it; otherwise (reading a stored run) dropped.
        A run key not given takes the method's `run_defaults`, then the
        field's default.
        """
        from keras_ssl.models import registry

        values = dict(values)
        method = registry.get(values.get("method", cls.method))
        values = {**method.run_defaults, **values}
        run_keys = {f.name for f in dataclasses.fields(cls)} - {"options"}
        own = {f.name for f in dataclasses.fields(method.options)}
        owners = registry.option_owners()
        run, options = {}, dict(values.pop("options", None) or {})
        for key, value in values.items():
            if key in run_keys:
                run[key] = value
            elif key in own:
                options[key] = value
            elif strict:
                if key in owners:
                    others = ", ".join(m.name for m, _ in owners[key])
                    raise UserError(f"{key} does not apply to method {method.name} (it is an option of {others})")
                raise UserError(f"unknown setting {key!r}")
        return cls(**run, options=method.make_options(options))

    def to_dict(self):
        """Flat: the run keys and the method's options (what `config.json` holds)."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        flat.update(dataclasses.asdict(self.options))
        return flat

    def validate(self):
        """Raises `UserError` naming the first bad value."""
        from keras_ssl.data.augment import PRESETS
        from keras_ssl.distribute import STRATEGIES
        from keras_ssl.encoders import ENCODERS_BY_MODALITY
        from keras_ssl.models.registry import validate_options
        from keras_ssl.optimizers import OPTIMIZERS

        method = self.method_spec
        augment_choices = tuple(PRESETS) + (() if method.requires_augmentation else ("none",))
        encoders = ENCODERS_BY_MODALITY[method.modality]
        checks = [
            (self.encoder in encoders,
             f"encoder must be one of {', '.join(encoders)} for method {self.method} ({method.modality}), "
             f"got {self.encoder!r}"),
            (0 < self.audio_seconds <= 60, "audio_seconds must be in (0, 60]"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.augment in augment_choices,
             f"augment must be one of {', '.join(augment_choices)} for method {self.method}"),
            (0.0 <= self.val_fraction < 0.5, "val_fraction must be in [0, 0.5)"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.lr_scaling in ("linear", "sqrt", "none"), "lr_scaling must be linear, sqrt or none"),
            (self.dtype_policy in DTYPE_POLICIES, f"dtype_policy must be one of {DTYPE_POLICIES}"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.width_multiplier > 0, "width_multiplier must be > 0"),
            (self.image_size is None or self.image_size >= 8, "image_size must be >= 8"),
            (self.channels in (None, 1, 3), "channels must be 1 or 3"),
            (self.train_limit is None or self.train_limit >= 2, "train_limit must be >= 2"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (bool(self.model_dir), "model_dir must be set"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        validate_options(self.options)
        parse_classes(self.train_classes)
        return self


def parse_classes(spec):
    """"0-6" or "0,2,5" (or None) -> sorted list of class ids (or None)."""
    if spec is None or spec == "":
        return None
    classes = set()
    try:
        for part in str(spec).split(","):
            if "-" in part:
                lo, hi = part.split("-")
                classes.update(range(int(lo), int(hi) + 1))
            else:
                classes.add(int(part))
    except ValueError:
        raise UserError(f"train_classes must look like 0-6 or 0,2,5, got {spec!r}")
    if len(classes) < 2:
        raise UserError(f"train_classes must name at least two classes, got {spec!r}")
    return sorted(classes)


def training_split(config, dataset):
    """The images a run trains on, and the held-out validation images (or None).

    Restricted to `train_classes`, then `val_fraction` of it held out by a fixed
    permutation (seed 0), then the first `train_limit`. The evaluator calls this
    too, so it calibrates on exactly the images training never saw.
    """
    split = dataset.train
    classes = parse_classes(config.train_classes)
    if classes is not None:
        if split.labels is None:
            raise UserError("train_classes needs a labelled dataset")
        missing = sorted(set(classes) - set(np.unique(split.labels).tolist()))
        if missing:
            raise UserError(f"train_classes names classes {missing} that {config.dataset} does not have")
        split = split.select(np.isin(split.labels, classes))
    val = None
    if config.val_fraction:
        split, val = split.split_off(config.val_fraction)
    return split.take(config.train_limit), val


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


def _check_resume(config):
    path = os.path.join(config.model_dir, "config.json")
    if not os.path.isfile(path):
        return
    stored = read_config(config.model_dir).to_dict()
    wanted = config.to_dict()
    diff = sorted(k for k in wanted if k not in _RESUMABLE_KEYS and stored.get(k) != wanted[k])
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


def _epoch_checkpoint_callback(model_dir, keep):
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
            except OSError:
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


def build_model(config, dataset):
    """The method's model for `config` (inside the current strategy scope)."""
    from keras_ssl.encoders import build_encoder

    method = config.method_spec
    check_modality(config, dataset)
    if method.modality == "audio":
        from keras_ssl.audio_encoders import build_audio_encoder

        encoder = build_audio_encoder(config.encoder, config.width_multiplier)
        return method.build(config, config.options, encoder, dataset)
    shape = dataset.image_shape
    if method.patch_encoder:  # trains on patches: a size-agnostic encoder
        shape = (None, None, shape[-1])
    encoder = build_encoder(config.encoder, shape, config.width_multiplier, config.cifar_stem)
    return method.build(config, config.options, encoder, dataset)


def check_modality(config, dataset):
    """A `UserError` when the dataset is not of the kind the method trains on."""
    method = config.method_spec
    kind = getattr(dataset, "modality", "image")
    if kind != method.modality:
        raise UserError(f"method {config.method} trains on {method.modality} and {config.dataset} holds {kind}; "
                        f"choose a{'n' if method.modality[0] in 'aeiou' else ''} {method.modality} dataset")


def load_run_dataset(config, dataset=None, data_dir=None):
    """The run's dataset (or `dataset`/`data_dir` instead of the run's) as it
    trained on it: images at `image_size`/`channels`, clips of `audio_seconds`."""
    from keras_ssl.data import load_source

    image_size = (config.image_size, config.image_size) if config.image_size else None
    return load_source(dataset or config.dataset, data_dir or config.data_dir, image_size, config.channels,
                       audio_seconds=config.audio_seconds)


def method_data(config, split):
    """`TrainingData(dataset, steps_per_epoch, batch_size)`: the method's training
    batches (an infinite tf.data pipeline) and what one epoch is."""
    return config.method_spec.training_data(config, config.options, split)


def _encoder_to_keep(config, encoder, dataset):
    """The encoder to keep: Keras's own layers only (it loads without
    keras_ssl), at the dataset's image size (a size-agnostic patch encoder gets
    its weights copied into a fixed-size one, which evaluation and export need).
    Audio encoders take any length and are kept as they are."""
    from keras_ssl.layers import with_keras_batch_norm

    if config.method_spec.modality == "audio":
        return encoder
    image_shape = dataset.image_shape
    if encoder.input_shape[1] is not None:
        return with_keras_batch_norm(encoder)
    from keras_ssl.encoders import build_encoder

    fixed = build_encoder(config.encoder, image_shape, config.width_multiplier, config.cifar_stem, sync_bn=False)
    fixed.set_weights(encoder.get_weights())
    return with_keras_batch_norm(fixed)


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


def train(config):
    """Trains per `config`; returns a dict of final metrics and paths (also `training.json`).

    The run directory is locked while training (a second run on it is refused)."""
    from keras_ssl.distribute import get_strategy, is_chief

    config.validate()
    strategy = get_strategy(config.strategy, config.cpu_replicas)  # first: may split the CPU
    chief = is_chief(strategy)
    if config.jit_compile and strategy.num_replicas_in_sync > 1 and gpu_compute_capability() is None:
        raise UserError("--jit_compile fails under a multi-replica strategy on CPU (TF 2.21 places a variable "
                        "on another device); drop --jit_compile or train on one replica")
    own_dir = worker_dir(config.model_dir, strategy)
    _check_resume(config)
    try:
        os.makedirs(own_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {own_dir}: {e.strerror}; fix --model_dir") from None
    with run_directory_lock(own_dir):
        return _train(config, strategy, chief, own_dir)


def _train(config, strategy, chief, own_dir):
    import keras

    from keras_ssl.distribute import shard_by_data
    from keras_ssl.optimizers import WarmupCosine, build_optimizer, scale_learning_rate

    keras.mixed_precision.set_global_policy(resolve_dtype_policy(config.dtype_policy))
    keras.utils.set_random_seed(config.seed)

    dataset = load_run_dataset(config)
    method = config.method_spec
    check_modality(config, dataset)
    if method.needs_labels and not dataset.labelled:
        raise UserError(f"method {config.method} trains on class labels and {config.dataset} has none; "
                        "use a labelled dataset (folder:PATH with one sub-folder per class)")
    train_split, _ = training_split(config, dataset)
    data, epoch_steps, batch_size = method_data(config, train_split)
    data = shard_by_data(data)
    steps = config.steps_per_epoch or epoch_steps
    total_steps = steps * config.epochs
    peak_lr = scale_learning_rate(config.learning_rate, batch_size, config.lr_scaling)
    schedule = WarmupCosine(peak_lr, total_steps, int(round(config.warmup_epochs * steps)))

    with strategy.scope():
        model = build_model(config, dataset)
        optimizer = build_optimizer(config.optimizer, schedule, config.weight_decay, config.momentum)
        model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
        model.build()
        model.optimizer.build(model.trainable_variables)
    if chief:  # only now: a start refused by the data or model checks must not claim the directory
        write_json(os.path.join(config.model_dir, "config.json"), config.to_dict())

    initial_epoch, checkpoint = resume_epoch(config, strategy, own_dir)
    if checkpoint:
        try:
            model.load_weights(checkpoint)
        except ValueError as e:  # e.g. written by an older keras_ssl with other layer classes
            raise UserError(f"{checkpoint} does not match this model ({str(e).splitlines()[0][:200]}); "
                            "it was probably written by an earlier keras_ssl version: train in a new "
                            "--model_dir") from None
        if chief:
            print(f"resuming from {checkpoint} (epoch {initial_epoch})", flush=True)
    checkpointer = _epoch_checkpoint_callback(own_dir, config.keep_checkpoints)
    callbacks = [checkpointer, keras.callbacks.TerminateOnNaN()]
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs"), update_freq="epoch"))
    start = time.time()
    history = {}
    if initial_epoch < config.epochs:
        hist = model.fit(data, epochs=config.epochs, steps_per_epoch=steps, initial_epoch=initial_epoch,
                         callbacks=callbacks, verbose=config.verbose if chief else 0, shuffle=False)
        history = {k: [float(np.ravel(v)[0]) for v in vals] for k, vals in hist.history.items()}
    elapsed = time.time() - start
    if checkpointer.no_space:
        raise UserError(checkpointer.no_space)
    if checkpointer.diverged or any(not math.isfinite(v) for vals in history.values() for v in vals[-1:]):
        epoch, why = checkpointer.diverged or (initial_epoch + len(next(iter(history.values()), [])), "NaN loss")
        good, _ = latest_checkpoint(own_dir)
        kept = (f"the last good checkpoint, epoch {good}, is kept and a rerun resumes from it"
                if good else "no epoch finished cleanly, nothing was saved")
        raise UserError(f"training diverged in epoch {epoch} ({why}); that epoch was not saved, {kept}; "
                        "rerun with a lower --learning_rate (allowed on resume) or check the data")
    epochs_run = config.epochs - initial_epoch
    encoder_path = os.path.join(config.model_dir, "encoder.keras")
    result = {
        "model_dir": config.model_dir,
        "encoder_path": encoder_path,
        "epochs_run": epochs_run,
        "steps_per_epoch": steps,
        "peak_learning_rate": peak_lr,
        "replicas": strategy.num_replicas_in_sync,
        "dtype_policy": keras.mixed_precision.global_policy().name,
        "train_seconds": elapsed,
        "examples_per_second": (method.images_per_example * epochs_run * steps * batch_size
                                / elapsed) if epochs_run else None,
        "example_unit": "clips" if method.modality == "audio" else "images",
        "images_per_second": None,
        "final_metrics": {k: v[-1] for k, v in history.items()},
        "class_names": list(dataset.class_names),
        "chief": chief,
    }
    if method.modality == "image":
        result["images_per_second"] = result["examples_per_second"]
    if not chief:  # a worker's scratch checkpoints are only for restarting the group
        shutil.rmtree(own_dir, ignore_errors=True)
        return result
    save_keras_atomic(_encoder_to_keep(config, model.encoder, dataset), encoder_path)
    save_keras_atomic(model, os.path.join(config.model_dir, "model.keras"))
    write_json(os.path.join(config.model_dir, "training.json"), result)
    return result
