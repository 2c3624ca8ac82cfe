"""A run's parts, assembled from its config: the training split, the dataset, the stage
(parent and prepared artefacts), the model and the method's batches. Training
(`keras_ssl.training`), evaluation (`keras_ssl.evaluation`) and the binaries share them;
`keras_ssl.training` re-exports them for users.
"""

import numpy as np

from keras_ssl.config import parse_classes
from keras_ssl.errors import UserError


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


def build_model(config, dataset, stage=None):
    """The method's model for `config` (inside the current strategy scope); `stage`:
    the run's `keras_ssl.stages.StageInputs` (default: read for `config`, the
    parent loaded and the prepared artefacts read or made)."""
    method = config.method_spec
    check_modality(config, dataset)
    if stage is None:
        stage = run_stage(config, dataset)
    encoder = run_modality(config).build_encoder(config, dataset, size_agnostic=method.patch_encoder)
    return _with_stage(method.build, stage, config, config.options, encoder, dataset)


def encoder_label(config, encoder):
    """The name of the encoder a run trains, for the start-up block and `evaluation.json`:
    the `--encoder` choice (`small_cnn`, `resnet18`, `cpc_conv`, ...), or, for a method that
    builds its own network whatever `--encoder` says (MAE's `vit`, iGPT's
    `pixel_transformer`, the speech Transformer of wav2vec 2.0 and HuBERT), that network's name."""
    name = getattr(encoder, "name", None)
    return config.encoder if not name or name.startswith(str(config.encoder)) else name


def _with_stage(function, stage, *args):
    """`function(*args, stage)`, or `function(*args)` for a method written before stages
    (its `build`/`training_data` takes no `stage` argument)."""
    import inspect

    parameters = inspect.signature(function).parameters.values()
    takes_stage = len(parameters) > len(args) or any(p.kind == p.VAR_POSITIONAL for p in parameters)
    return function(*args, stage) if takes_stage else function(*args)


def run_stage(config, dataset=None, chief=False):
    """The `StageInputs` of a run (`keras_ssl.stages.stage_inputs`; the training split of
    `dataset`, by default the run's, is only loaded when artefacts must be made); an
    empty one for a method that is no stage."""
    from keras_ssl.stages import is_stage, no_stage, stage_inputs

    method = config.method_spec
    if not is_stage(method):  # a --parent_run given to it is refused by TrainConfig.validate()
        return no_stage()

    def split():
        return training_split(config, dataset if dataset is not None else load_run_dataset(config))[0]

    return stage_inputs(config, split, chief)


def run_modality(config):
    """The `Modality` (`keras_ssl.modalities`) of the run's method."""
    from keras_ssl import modalities

    return modalities.get(config.method_spec.modality)


def check_modality(config, dataset):
    """A `UserError` when the dataset is not of the kind the method trains on."""
    method = config.method_spec
    kind = dataset.modality
    if kind != method.modality:
        raise UserError(f"method {config.method} trains on {method.modality} and {dataset.name} holds {kind}; "
                        f"choose a{'n' if method.modality[0] in 'aeiou' else ''} {method.modality} dataset")


def load_run_dataset(config, dataset=None, data_dir=None):
    """The run's dataset (or `dataset`/`data_dir` instead of the run's) as it
    trained on it (its modality's settings: image size and channels, clip length)."""
    return run_modality(config).load_run_dataset(config, dataset, data_dir)


def method_data(config, split, stage=None):
    """`TrainingData(dataset, steps_per_epoch, batch_size)`: the method's training
    batches (an infinite tf.data pipeline, without tf.data's autotuning thread, whose wait
    held up the end of `fit`: `keras_ssl.data.finish`) and what one epoch is; `stage` as for
    `build_model` (default: read for `config`)."""
    from keras_ssl.data.finish import without_autotune_thread

    if stage is None:
        stage = run_stage(config)
    data = _with_stage(config.method_spec.training_data, stage, config, config.options, split)
    return data._replace(dataset=without_autotune_thread(data.dataset))
