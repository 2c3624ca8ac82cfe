"""The method registry: each method declares itself once, in its own file.

A method file in `keras_ssl/models/` defines

* its model (a `MethodModel` subclass: the train/test step, what it serves),
* its options: a dataclass of its hyper-parameters, each an `option(...)`
  with the help text, the allowed values and the source of its default,
* `build(run, options, encoder, dataset, stage) -> model` and
  `training_data(run, options, split, stage) -> TrainingData` (`stage`: the
  parent run and prepared artefacts of a method that is a stage, see
  `keras_ssl.stages`; an empty one otherwise; a method written without the
  `stage` argument is still called without it),

and calls `register(Method(...))`. Training (`keras_ssl.training`), the three
binaries (their `--method` choices and the method flags, generated from the
options dataclasses), the evaluator and the exporter look methods up here;
none of them switches on a method's name.
"""

import dataclasses
import typing
from typing import Callable

from keras_ssl.errors import UserError
from keras_ssl.options import NOT_STORED, make_options, option, option_type, validate_options  # noqa: F401

_REGISTRY = {}


class TrainingData(typing.NamedTuple):
    """What a method trains on: an infinite `tf.data` pipeline of batches, the
    steps that make one epoch, the batch size (batch elements per step) and, where a
    batch element is not one of the modality's examples, what it is (`unit`, e.g. GPT's
    packed "windows"; None: the modality's unit, "images", "clips", "texts")."""

    dataset: object
    steps_per_epoch: int
    batch_size: int
    unit: str | None = None


def epoch_steps(split, batch_size):
    """Full batches of `batch_size` in `split`, at least one (else a `UserError`)."""
    if len(split) < batch_size:
        raise UserError(f"the training split has {len(split)} examples, fewer than one batch of {batch_size}; "
                        "lower --batch_size")
    return len(split) // batch_size


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method, as the rest of keras_ssl sees it.

    Attributes:
      name: the `--method` value.
      summary: one line for `--help` (what it is, and its source).
      options: the dataclass of its hyper-parameters (fields made with `option`).
      build: `(run, options, encoder, dataset, stage) -> MethodModel`, called
        inside the strategy scope; `run` is the `TrainConfig`, `dataset` the
        loaded source (image shape, classes), `stage` a
        `keras_ssl.stages.StageInputs`.
      training_data: `(run, options, split, stage) -> TrainingData`.
      images_per_example: inputs through the encoder per batch element (for
        images/s): 2 for a pair of views, 3 for a triplet, 4 for RotNet.
      modality: what it trains on, a registered `keras_ssl.modalities` name
        (`"image"`: uint8 HWC images, the image encoders; `"audio"`: 16 kHz float
        waveforms, the audio encoders); the dataset must be of the same kind.
      run_defaults: run settings this method changes the default of (e.g.
        the optimizer of its paper); a value the user gives still wins.
      evaluations: what `keras-ssl-evaluate` runs, in order (names registered in
        `keras_ssl.evaluation.method_evaluations`, each listing its report keys
        and plots; a method's own is added with `register_evaluation`); default
        the frozen-feature probe and kNN.
      requires_augmentation: `--augment=none` is refused (SimCLR's views).
      patch_encoder: the encoder trains on patches, so it is built
        size-agnostic (`(None, None, C)`); the kept encoder is a copy at the
        image size.
      needs_labels: trains only on a labelled dataset.
      smoke_options: tiny settings (run and method keys) on which the contract
        test trains it in seconds on its modality's smoke dataset.
      parent: the method whose finished run this one continues (`--parent_run`),
        loaded frozen into `stage.parent`; None for a method that trains from
        scratch.
      prepare: `(run, options, split, parent) -> {name: array}`, run once before
        training; its artefacts are saved in the run directory and reach
        `build`/`training_data` as `stage.artefacts` (k-means targets, a
        vocabulary).
      preprocessor: `(artefacts) -> object` (a tokenizer, say): `stage.preprocessor`.
    """

    name: str
    summary: str
    options: type
    build: Callable
    training_data: Callable
    images_per_example: int = 1
    modality: str = "image"
    run_defaults: dict = dataclasses.field(default_factory=dict)
    evaluations: tuple = ("probe",)
    requires_augmentation: bool = False
    patch_encoder: bool = False
    needs_labels: bool = False
    smoke_options: dict = dataclasses.field(default_factory=dict)
    parent: str | None = None
    prepare: Callable | None = None
    preprocessor: Callable | None = None

    def make_options(self, values=None):
        """The method's options from a dict of its own keys (others refused)."""
        return make_options(self.options, values, f"method {self.name}")


def register(method):
    """Adds `method` to the registry (a second method of the same name is refused, and
    so is one declaring an evaluation no one registered: a method's own evaluation is
    registered first, `keras_ssl.evaluation.method_evaluations.register_evaluation`)."""
    from keras_ssl.evaluation.method_evaluations import EVALUATIONS

    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"method {method.name!r} is registered twice")
    unknown = [name for name in method.evaluations if name not in EVALUATIONS]
    if unknown:
        raise ValueError(f"method {method.name!r} declares evaluation {unknown[0]!r}; the registered ones are "
                         f"{', '.join(EVALUATIONS)} (register_evaluation adds one)")
    _REGISTRY[method.name] = method
    return method


def _load():
    import keras_ssl.models  # noqa: F401  (each method file registers itself)


def get(name):
    """The registered `Method` called `name`, or a `UserError` listing them."""
    _load()
    if name not in _REGISTRY:
        raise UserError(f"method must be one of {', '.join(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def names():
    """Registered method names, in registration order."""
    _load()
    return tuple(_REGISTRY)


def methods():
    _load()
    return tuple(_REGISTRY.values())


def option_owners():
    """`{option name: [(method, field), ...]}` over every method: one flag per name."""
    owners = {}
    for method in methods():
        for f in dataclasses.fields(method.options):
            owners.setdefault(f.name, []).append((method, f))
    return owners
