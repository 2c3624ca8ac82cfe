"""One training run from a config: what `keras-ssl-train` does, callable from code.

    from keras_ssl.training import TrainConfig, train
    result = train(TrainConfig(dataset="digits", epochs=2, model_dir="runs/try"))

Re-running with the same model_dir resumes from the latest checkpoint; a
different config (other than `epochs`/`verbose`/`keep_checkpoints`/
`learning_rate`/the directory's spelling) is refused rather than mixed in.
The run directory's layout is in `keras_ssl.run_directory`; the settings in
`keras_ssl.config`.
"""

import math
import os
import shutil
import time

import numpy as np

from keras_ssl.config import DTYPE_POLICIES, TrainConfig, parse_classes
from keras_ssl.errors import UserError
from keras_ssl.precision import dtype_policy_reason, gpu_compute_capability, resolve_dtype_policy
from keras_ssl.progress import first_step_callback, keras_verbosity, progress_callback, start_summary
from keras_ssl.run_directory import (
    check_resume,
    clear_divergence,
    epoch_checkpoint_callback,
    latest_checkpoint,
    record_divergence,
    read_config,
    resume_epoch,
    run_directory_lock,
    save_keras_atomic,
    worker_dir,
    write_json,
)
from keras_ssl.run_setup import (
    build_model,
    check_modality,
    load_run_dataset,
    method_data,
    run_modality,
    run_stage,
    training_split,
)
from keras_ssl.stages import check_workers_agree

# What users and the binaries import from here (the config, run-directory and
# run-setup helpers live in their own modules and are re-exported for them).
__all__ = [
    "DEFAULT_ENCODERS", "DTYPE_POLICIES", "TrainConfig", "build_model", "check_modality", "latest_checkpoint", "load_run_dataset",
    "method_data", "parse_classes", "read_config", "run_directory_lock", "run_modality", "train", "training_split",
]


def train(config):
    """Trains per `config`; returns a dict of final metrics and paths (also `training.json`).

    The run directory is locked while training (a second run on it is refused).
    Training runs under `config.dtype_policy`; the caller's global Keras dtype
    policy is restored on return, so models built afterwards are unaffected."""
    from keras_ssl.distribute import get_strategy, is_chief

    config.validate()
    strategy = get_strategy(config.strategy, config.cpu_replicas)  # first: may split the CPU
    chief = is_chief(strategy)
    if config.jit_compile and strategy.num_replicas_in_sync > 1 and gpu_compute_capability() is None:
        raise UserError("--jit_compile fails under a multi-replica strategy on CPU (TF 2.21 places a variable "
                        "on another device); drop --jit_compile or train on one replica")
    own_dir = worker_dir(config.model_dir, strategy)
    check_resume(config)
    try:
        os.makedirs(own_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {own_dir}: {e.strerror}; fix --model_dir") from None
    import keras

    callers_policy = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy(resolve_dtype_policy(config.dtype_policy))
        with run_directory_lock(own_dir):
            return _train(config, strategy, chief, own_dir)
    finally:
        keras.mixed_precision.set_global_policy(callers_policy)


def _train(config, strategy, chief, own_dir):
    import keras

    from keras_ssl.distribute import shard_by_data
    from keras_ssl.optimizers import WarmupCosine, build_optimizer, scale_learning_rate

    keras.utils.set_random_seed(config.seed)

    dataset = load_run_dataset(config)
    method = config.method_spec
    check_modality(config, dataset)
    if method.needs_labels and not dataset.labelled:
        raise UserError(f"method {config.method} trains on class labels and {config.dataset} has none; "
                        "use a labelled dataset (folder:PATH with one sub-folder per class)")
    train_split, _ = training_split(config, dataset)
    stage = run_stage(config, dataset, chief)  # the parent checked and loaded, artefacts prepared (or read)
    check_workers_agree(strategy, method.name, stage.artefacts)
    data, epoch_steps, batch_size, unit = method_data(config, train_split, stage)
    data = shard_by_data(data)
    steps = config.steps_per_epoch or epoch_steps
    total_steps = steps * config.epochs
    peak_lr = scale_learning_rate(config.learning_rate, batch_size, config.lr_scaling)
    schedule = WarmupCosine(peak_lr, total_steps, int(round(config.warmup_epochs * steps)))

    with strategy.scope():
        model = build_model(config, dataset, stage)
        optimizer = build_optimizer(config.optimizer, schedule, config.weight_decay, config.momentum)
        model.total_steps = total_steps  # the momentum pairs' schedule (keras_ssl.models.hooks)
        model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
        model.build()
        model.optimizer.build(model.trainable_variables)

    initial_epoch, checkpoint = resume_epoch(config, strategy, own_dir)
    if chief and config.verbose:
        policy = keras.mixed_precision.global_policy().name
        print(start_summary(config, dataset, len(train_split), model, steps=steps, batch_size=batch_size,
                            peak_lr=peak_lr, replicas=strategy.num_replicas_in_sync, strategy=config.strategy,
                            dtype_policy=policy, dtype_reason=dtype_policy_reason(config.dtype_policy),
                            initial_epoch=initial_epoch), flush=True)
    if checkpoint:
        try:
            model.load_weights(checkpoint)
        except ValueError as e:  # e.g. written by an older keras_ssl with other layer classes
            raise UserError(f"{checkpoint} does not match this model ({str(e).splitlines()[0][:200]}); "
                            "it was probably written by an earlier keras_ssl version: train in a new "
                            "--model_dir") from None
        if chief:
            print(f"resuming from {checkpoint} (epoch {initial_epoch})", flush=True)
    if chief:  # only now: a start refused by the data, model or checkpoint checks must not claim the directory
        write_json(os.path.join(config.model_dir, "config.json"), config.to_dict())
    checkpointer = epoch_checkpoint_callback(own_dir, config.keep_checkpoints)
    callbacks = [checkpointer, keras.callbacks.TerminateOnNaN()]
    fit_verbose = keras_verbosity(config.verbose) if chief else 0
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs"), update_freq="epoch"))
    modality = run_modality(config)
    unit = unit or modality.unit  # what one batch element is: images, clips, texts, GPT's packed windows
    if fit_verbose == 2:  # no per-step bar: periodic lines instead
        callbacks.append(progress_callback(epochs=config.epochs, steps=steps, unit=unit,
                                           examples_per_step=batch_size * method.images_per_example))
    elif fit_verbose == 1:  # Keras's bar stays blank until the first step is done: a heartbeat until then
        callbacks.append(first_step_callback())
    start = time.time()
    history = {}
    if initial_epoch < config.epochs:
        hist = model.fit(data, epochs=config.epochs, steps_per_epoch=steps, initial_epoch=initial_epoch,
                         callbacks=callbacks, verbose=fit_verbose, shuffle=False)
        history = {k: [float(np.ravel(v)[0]) for v in vals] for k, vals in hist.history.items()}
    elapsed = time.time() - start
    if checkpointer.no_space:
        raise UserError(checkpointer.no_space)
    if checkpointer.diverged or any(not math.isfinite(v) for vals in history.values() for v in vals[-1:]):
        epoch, why = checkpointer.diverged or (initial_epoch + len(next(iter(history.values()), [])), "NaN loss")
        good, _ = latest_checkpoint(own_dir)
        kept = (f"the last good checkpoint, epoch {good}, is kept and a rerun resumes from it"
                if good else "no epoch finished cleanly, nothing was saved")
        message = (f"training diverged in epoch {epoch} ({why}); that epoch was not saved, {kept}; "
                   "rerun with a lower --learning_rate (allowed on resume) or check the data")
        if chief:  # evaluate/export of this directory name the cause, not only a missing encoder
            record_divergence(config.model_dir, epoch, why, message)
        raise UserError(message)
    if chief:
        clear_divergence(config.model_dir)
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
        "example_unit": unit,
        "images_per_second": None,  # and <unit>_per_second below (images_per_second for image runs)
        "final_metrics": {k: v[-1] for k, v in history.items()},
        # the epoch a rerun of a finished run found it at (nothing was trained), else None
        "already_finished_at": (latest_checkpoint(own_dir)[0] or initial_epoch) if not epochs_run else None,
        "class_names": list(dataset.class_names),
        "chief": chief,
    }
    result[f"{unit}_per_second"] = result["examples_per_second"]  # images_per_second, clips_per_second
    if not chief:  # a worker's scratch checkpoints are only for restarting the group
        shutil.rmtree(own_dir, ignore_errors=True)
        return result
    model_path = os.path.join(config.model_dir, "model.keras")
    if epochs_run or not (os.path.isfile(encoder_path) and os.path.isfile(model_path)):
        # a rerun of a finished run trained nothing: its files stay as they are (a stage's
        # artefacts are fingerprinted by its parent's model.keras)
        save_keras_atomic(modality.encoder_to_keep(config, model.encoder, dataset), encoder_path)
        save_keras_atomic(model, model_path)
        write_json(os.path.join(config.model_dir, "training.json"), result)
    return result


def __getattr__(name):
    if name == "DEFAULT_ENCODERS":  # deprecated: keras_ssl.modalities.get(name).default_encoder
        from keras_ssl import modalities

        return {m: modalities.get(m).default_encoder for m in modalities.names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
