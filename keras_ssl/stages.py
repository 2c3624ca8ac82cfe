"""Runs as stages: a method may continue a finished run of another method (its parent),
and may prepare artefacts once before training.

    keras-ssl-train --flagfile=flags/<parent>.cfg                      # stage 1
    keras-ssl-train --flagfile=flags/<child>.cfg --parent_run=runs/p   # stage 2

A method declares `parent="<method>"` (`keras_ssl.models.registry.Method`): its runs
need `--parent_run=DIR`, a finished run of that method (its `model.keras` written, not
diverged), whose model is loaded frozen and handed to the method's `build` and
`training_data`. A method without a parent refuses `--parent_run`. Every refusal is one
line naming the directory and what to do.

A method may also declare `prepare(run, options, split, parent) -> {name: array}`: run
once before the first epoch on the training split (k-means targets of the parent's
features, a vocabulary, a palette), its artefacts saved in the run directory
(`prepared.npz`, written atomically by the chief) and read back on every resume, so a
resumed run trains on exactly the targets it started with. The file carries a
fingerprint of what they were made from (the run's settings beyond those a resume may
change, and the parent's `model.keras` size and time): artefacts made for other
settings or another parent are made again when the run has not trained yet (a refused
start left them), and refused once it has (the parent was retrained: resuming would
change the run's targets mid-run). Under MultiWorkerMirroredStrategy every worker prepares for
itself (only the chief writes), so `prepare` must be deterministic: seed every random
choice. The workers compare a digest of their artefacts before training
(`check_workers_agree`), and a difference stops the run with one line. Artefacts are plain numeric or string arrays (no objects), named like Python
identifiers. `preprocessor(artefacts) -> object` (a tokenizer layer, say) is built from
them.

A chain is one flagfile per stage; checkpoints, resume, the run-directory lock and
divergence handling are those of any run (`keras_ssl.training`).
"""

import dataclasses
import os

import numpy as np

from keras_ssl.errors import UserError

PREPARED_FILE = "prepared.npz"
_FINGERPRINT = "keras_ssl_fingerprint"  # the key in prepared.npz that is not an artefact


@dataclasses.dataclass
class StageInputs:
    """What a stage hands its method's `build` and `training_data`: the parent run's
    model loaded frozen (None without a parent) and its config, the prepared artefacts
    (`{name: np.ndarray}`, empty without a prepare step) and the preprocessor made
    from them (None without one)."""

    parent: object = None
    parent_config: object = None
    artefacts: dict = dataclasses.field(default_factory=dict)
    preprocessor: object = None


def no_stage():
    """The `StageInputs` of a method that is no stage: nothing (a fresh one each time)."""
    return StageInputs()


def check_parent_run(config):
    """The parent run's `TrainConfig` for a method with a parent (None for one without),
    after checking `config.parent_run` is a finished, healthy run of the right method;
    a `UserError` otherwise."""
    from keras_ssl.run_directory import diverged_run, read_config

    method = config.method_spec
    given = config.parent_run
    if method.parent is None:
        if given:
            raise UserError(f"--parent_run does not apply to method {method.name} (it trains from scratch, not "
                            "from a finished run); drop --parent_run")
        return None
    if not given:
        raise UserError(f"method {method.name} continues a finished {method.parent} run: pass "
                        f"--parent_run=DIR, the run directory of that {method.parent} run")
    if not os.path.isdir(given):
        raise UserError(f"--parent_run={given} is not a directory; give the run directory of a finished "
                        f"{method.parent} run")
    if not os.path.isfile(os.path.join(given, "config.json")):
        raise UserError(f"--parent_run={given} holds no training run (no config.json); give the run directory of "
                        f"a finished {method.parent} run")
    parent_config = read_config(given)
    if parent_config.method != method.parent:
        raise UserError(f"--parent_run={given} is a {parent_config.method} run; method {method.name} continues a "
                        f"{method.parent} run")
    diverged = diverged_run(given)
    if diverged:
        raise UserError(f"--parent_run={given} stopped: {diverged.get('message', 'it diverged')}; finish that run "
                        "first")
    if not os.path.isfile(os.path.join(given, "model.keras")):
        raise UserError(f"--parent_run={given} has not finished training (no model.keras); rerun its command to "
                        "finish it first")
    return parent_config


def load_parent(config):
    """`(model, parent TrainConfig)` of the run's parent, the model frozen; `(None, None)`
    for a method without a parent."""
    parent_config = check_parent_run(config)
    if parent_config is None:
        return None, None
    from keras_ssl.saving import load_model

    parent = load_model(os.path.join(config.parent_run, "model.keras"))
    parent.trainable = False
    return parent, parent_config


def is_stage(method):
    """True for a method with a parent, a prepare step or a preprocessor."""
    return method.parent is not None or method.prepare is not None or method.preprocessor is not None


def stage_inputs(config, training_split, chief=True):
    """The `StageInputs` of a run: its parent (loaded frozen) and its prepared artefacts,
    read from `<model_dir>/prepared.npz` when a previous start wrote them for the same
    settings and parent, else made by the method's `prepare` on `training_split()` (a
    callable: the split is only made when needed) and written there by the chief."""
    method = config.method_spec
    parent, parent_config = load_parent(config)
    artefacts = {}
    if method.prepare is not None:
        path = os.path.join(config.model_dir, PREPARED_FILE)
        fingerprint = _fingerprint(config)
        artefacts = _read_artefacts(path, fingerprint)
        if artefacts is None and os.path.isfile(path) and _has_checkpoints(config.model_dir):
            # the run trained on the stored artefacts; others now would change its targets mid-run
            raise UserError(f"{config.model_dir} trained on artefacts prepared from another state of its parent "
                            f"{config.parent_run} (retrained since?); resuming would change its targets: start a "
                            "new --model_dir")
        if artefacts is None:
            artefacts = {name: np.asarray(value) for name, value in
                         method.prepare(config, config.options, training_split(), parent).items()}
            _check_artefacts(method.name, artefacts)
            if chief:
                write_artefacts(path, artefacts, fingerprint)
    preprocessor = method.preprocessor(artefacts) if method.preprocessor is not None else None
    return StageInputs(parent, parent_config, artefacts, preprocessor)


def artefacts_digest(artefacts):
    """A CRC-32 of the artefacts' names, dtypes, shapes and bytes (order-independent of
    the dict's order)."""
    import zlib

    digest = 0
    for name in sorted(artefacts):
        value = np.ascontiguousarray(artefacts[name])
        digest = zlib.crc32(f"{name}:{value.dtype.str}:{value.shape}".encode(), digest)
        digest = zlib.crc32(value.tobytes(), digest)
    return digest


def check_workers_agree(strategy, method_name, artefacts):
    """A `UserError` when the workers of a multi-worker run prepared different artefacts
    (a `prepare` that is not deterministic would train each worker on other targets,
    silently); nothing to compare on one worker. A collective: every worker calls it."""
    from keras_ssl.distribute import gather_from_workers, in_multi_worker_mode

    if not artefacts or not in_multi_worker_mode(strategy):
        return
    digests = sorted({row[0] for row in gather_from_workers(strategy, [artefacts_digest(artefacts)])})
    if len(digests) > 1:
        raise UserError(f"the workers prepared different artefacts for method {method_name} (digests "
                        f"{', '.join(f'{d:08x}' for d in digests)}): its prepare must give the same result on every "
                        "worker; seed every random choice in it")


def _has_checkpoints(model_dir):
    from keras_ssl.run_directory import latest_checkpoint

    return latest_checkpoint(model_dir)[0] > 0


def _fingerprint(config):
    """What a run's artefacts depend on: its settings (less those a resume may change)
    and its parent's model file (size and modification time)."""
    import json

    from keras_ssl.run_directory import RESUMABLE_KEYS

    settings = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_KEYS}
    if config.parent_run:
        stat = os.stat(os.path.join(config.parent_run, "model.keras"))
        settings["parent_model"] = [stat.st_size, stat.st_mtime_ns]
    return json.dumps(settings, sort_keys=True, default=str)


def _read_artefacts(path, fingerprint):
    """The artefacts in `path` when they were made for `fingerprint`, else None."""
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as stored:
        if _FINGERPRINT not in stored.files or str(stored[_FINGERPRINT]) != fingerprint:
            return None  # made for other settings or another parent: made again
        return {name: stored[name] for name in stored.files if name != _FINGERPRINT}


def _check_artefacts(method_name, artefacts):
    """A ValueError (a method's bug, not a user's) for artefacts `np.savez` cannot round-trip."""
    for name, value in artefacts.items():
        if not name.isidentifier() or name in ("file", "allow_pickle", _FINGERPRINT):
            raise ValueError(f"{method_name}'s prepare returned an artefact named {name!r}; use another name")
        if value.dtype == object:
            raise ValueError(f"{method_name}'s prepare returned {name!r} as Python objects; return a numeric or "
                             "string array")


def write_artefacts(path, artefacts, fingerprint=""):
    """`np.savez` (with the fingerprint) to a temporary file in the same directory, then
    renamed into place."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **artefacts, **{_FINGERPRINT: np.asarray(fingerprint)})  # codes, targets: small ints
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def stored_artefacts(config):
    """The artefacts a run's `prepare` stored in its directory for its settings, or None
    (not prepared yet, or prepared for other settings): what a modality reads back
    after training (the text modality's tokenizer)."""
    return _read_artefacts(os.path.join(config.model_dir, PREPARED_FILE), _fingerprint(config))
