"""The settings of one training run: `TrainConfig` and the parsing it needs.

    from keras_ssl.config import TrainConfig
    config = TrainConfig.from_dict({"method": "siamese", "margin": 0.5, "dataset": "digits"})

The run keys are the fields of `TrainConfig`; a method's own hyper-parameters
live in its options dataclass (see `keras_ssl.models.registry`), the settings
of its modality (`image_size`, `audio_seconds`, ...) in the modality's settings
dataclass (see `keras_ssl.modalities`), and all three are spelt flat in flags
and in a run directory's `config.json`.
"""

import dataclasses
import inspect
import os

from keras_ssl.errors import UserError
from keras_ssl.options import stored_defaults, validate_options
from keras_ssl.precision import POLICIES

DTYPE_POLICIES = POLICIES


@dataclasses.dataclass
class TrainConfig:
    """What every run needs; the method's own hyper-parameters are `options`,
    its modality's settings `settings`.

    `options` is the method's options dataclass (e.g. `SimCLROptions`, see
    `keras_ssl.models.registry`), or a dict of its keys, or None for its
    defaults; `settings` likewise the settings dataclass of the method's
    modality (`ImageSettings`: `image_size`, `channels`, `cifar_stem`,
    `augment`; `AudioSettings`: `audio_seconds`). A setting may also be given
    and read flat (`TrainConfig(augment="none").augment`).
    `TrainConfig.from_dict` takes everything flat, as the flags and
    `config.json` spell it:

        TrainConfig.from_dict({"method": "siamese", "margin": 0.5, "dataset": "digits"})

    Sources of the defaults (the SimCLR-on-Fashion-MNIST long run):
    `weight_decay=1e-6`, LARS with `learning_rate=0.3` and linear scaling
    (peak 0.3 x B/256), momentum 0.9, cosine decay: SimCLR (Chen et al. 2020,
    B.9 for CIFAR-10). `warmup_epochs=2` and `batch_size=256` are ours (short runs).
    """

    model_dir: str = "runs/simclr_fashion_mnist"
    method: str = "simclr"
    parent_run: str | None = None  # a stage's finished parent run (keras_ssl.stages)
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    train_limit: int | None = None
    encoder: str | None = None  # None: the default encoder of the method's modality (keras_ssl.modalities)
    width_multiplier: float = 1.0
    batch_size: int = 256
    epochs: int = 10
    steps_per_epoch: int | None = None
    optimizer: str = "lars"
    learning_rate: float = 0.3
    lr_scaling: str = "linear"
    warmup_epochs: float = 2.0
    weight_decay: float = 1e-6
    momentum: float = 0.9
    train_classes: str | None = None
    val_fraction: float = 0.0
    strategy: str = "default"
    cpu_replicas: int | None = None
    dtype_policy: str = "auto"  # see keras_ssl.precision.resolve_dtype_policy
    jit_compile: bool = False
    seed: int = 0
    keep_checkpoints: int = 3
    verbose: int = 1
    settings: object = None
    options: object = None

    def __post_init__(self):
        from keras_ssl import modalities
        from keras_ssl.models import registry

        method = registry.get(self.method)
        if self.options is None or isinstance(self.options, dict):
            self.options = method.make_options(self.options)
        elif not isinstance(self.options, method.options):
            raise UserError(f"options for method {self.method} must be a {method.options.__name__}, "
                            f"got {type(self.options).__name__}")
        modality = modalities.get(method.modality)
        if self.settings is None or isinstance(self.settings, dict):
            _refuse_foreign(method, self.settings or {}, modality)
            self.settings = modality.make_settings(self.settings)
        elif not isinstance(self.settings, modality.settings):
            raise UserError(f"settings for method {self.method} must be a {modality.settings.__name__}, "
                            f"got {type(self.settings).__name__}")
        else:  # its own copy: a config made by dataclasses.replace must not share (and change) another's
            self.settings = dataclasses.replace(self.settings)
        if self.parent_run:  # a stage's parent, wherever the run is evaluated or resumed from
            self.parent_run = os.path.abspath(self.parent_run)
        if self.encoder is None:
            self.encoder = modality.default_encoder

    def __getattr__(self, name):
        """A setting of the run's modality, read flat (`config.image_size`)."""
        settings = self.__dict__.get("settings")
        if settings is not None and not name.startswith("__") and hasattr(settings, name):
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__} of method {self.__dict__.get('method')} has no {name!r}")

    def __setattr__(self, name, value):
        """A setting of the run's modality, written flat (`config.augment = "none"`);
        any other name that is not a run key is refused (it would be lost silently:
        `to_dict` and `config.json` hold only the run keys, settings and options)."""
        settings = self.__dict__.get("settings")
        if name in _FIELDS or name.startswith("_"):
            object.__setattr__(self, name, value)
        elif settings is not None and hasattr(settings, name):
            setattr(settings, name, value)
        else:
            try:
                _refuse_foreign(self.method_spec, {name: value}, _modality_of(self.method_spec))
            except UserError as e:
                raise AttributeError(str(e)) from None

    @property
    def method_spec(self):
        """The registered `Method` of this run."""
        from keras_ssl.models import registry

        return registry.get(self.method)

    @classmethod
    def from_dict(cls, values, strict=True):
        """A config from flat keys (run keys and the method's option keys).

        `strict`: a key of another method's options or another modality's
        settings (or no one's) is refused with a `UserError` naming it;
        otherwise (reading a stored run) dropped, and an option or setting the
        stored run predates takes its `stored_default`. A run key or setting
        not given takes the method's `run_defaults`, then the field's default.
        """
        from keras_ssl import modalities
        from keras_ssl.models import registry

        values = dict(values)
        method = registry.get(values.get("method", cls.method))
        modality = modalities.get(method.modality)
        values = {**method.run_defaults, **values}
        own_options = {f.name for f in dataclasses.fields(method.options)}
        own_settings = {f.name for f in dataclasses.fields(modality.settings)}
        run = {}
        options = dict(values.pop("options", None) or {})
        settings = dict(values.pop("settings", None) or {})
        foreign = {}
        for key, value in values.items():
            if key in _RUN_KEYS:
                run[key] = value
            elif key in own_options:
                options[key] = value
            elif key in own_settings:
                settings[key] = value
            else:
                foreign[key] = value
        if strict:
            _refuse_foreign(method, foreign, modality)
        else:  # a stored run: fields added since it was written keep their old behaviour
            options.update(stored_defaults(method.options, options))
            settings.update(stored_defaults(modality.settings, settings))
        return cls(**run, settings=modality.make_settings(settings), options=method.make_options(options))

    def to_dict(self):
        """Flat: the run keys, the modality's settings and the method's options
        (what `config.json` holds)."""
        flat = {name: getattr(self, name) for name in _RUN_KEYS}
        flat.update(dataclasses.asdict(self.settings))
        flat.update(dataclasses.asdict(self.options))
        return flat

    def validate(self):
        """Raises `UserError` naming the first bad value."""
        from keras_ssl.distribute import STRATEGIES
        from keras_ssl import modalities
        from keras_ssl.optimizers import LR_SCALINGS, OPTIMIZERS

        method = self.method_spec
        modality = modalities.get(method.modality)
        encoders = modality.encoders
        checks = [
            (not self.parent_run or method.parent is not None,
             f"--parent_run does not apply to method {self.method} (it trains from scratch, not from a finished "
             "run); drop --parent_run"),
            (self.encoder in encoders,
             f"encoder must be one of {', '.join(encoders)} for method {self.method} ({method.modality}), "
             f"got {self.encoder!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (0.0 <= self.val_fraction < 0.5, "val_fraction must be in [0, 0.5)"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.lr_scaling in LR_SCALINGS, f"lr_scaling must be one of {', '.join(LR_SCALINGS)}"),
            (self.dtype_policy in DTYPE_POLICIES, f"dtype_policy must be one of {DTYPE_POLICIES}"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch must be >= 1"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.width_multiplier > 0, "width_multiplier must be > 0"),
            (self.train_limit is None or self.train_limit >= 2, "train_limit must be >= 2"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.verbose in (0, 1, 2), "verbose must be 0, 1 or 2"),
            (bool(self.model_dir), "model_dir must be set"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        validate_options(self.settings)
        modality.check_run(self)
        validate_options(self.options)
        parse_classes(self.train_classes)
        return self


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_RUN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("settings", "options"))
_generated_init = TrainConfig.__init__


def _init_with_flat_settings(self, *args, **values):
    """The dataclass's `__init__`, also taking the modality's settings and the
    method's options flat (`TrainConfig(method="rotation", augment="none")`, as
    before the settings moved to `settings`; `dataclasses.replace(config,
    image_size=64)`)."""
    from keras_ssl.models import registry

    values = dict(values)
    flat = {key: values.pop(key) for key in list(values) if key not in _FIELDS}
    if flat:
        method = registry.get(values.get("method", args[1] if len(args) > 1 else TrainConfig.method))
        modality = _modality_of(method)
        own_options = {f.name for f in dataclasses.fields(method.options)}
        options = {key: flat.pop(key) for key in list(flat) if key in own_options}
        _refuse_foreign(method, flat, modality)
        for field, given in (("options", options), ("settings", flat)):
            if not given:
                continue
            current = values.get(field)
            values[field] = {**(current or {}), **given} if current is None or isinstance(current, dict) \
                else dataclasses.replace(current, **given)
    _generated_init(self, *args, **values)


_init_with_flat_settings.__doc__ = _generated_init.__doc__
_init_with_flat_settings.__signature__ = inspect.signature(_generated_init)
TrainConfig.__init__ = _init_with_flat_settings


def _modality_of(method):
    from keras_ssl import modalities

    return modalities.get(method.modality)


def _refuse_foreign(method, values, modality):
    """A `UserError` for the first key of `values` that is not a setting of `modality`:
    named as another method's option, another modality's setting, or unknown."""
    from keras_ssl import modalities
    from keras_ssl.models import registry

    own = {f.name for f in dataclasses.fields(modality.settings)}
    for key in values:
        if key in own:
            continue
        options = registry.option_owners().get(key)
        if options:
            others = ", ".join(m.name for m, _ in options)
            raise UserError(f"{key} does not apply to method {method.name} (it is an option of {others})")
        settings = modalities.setting_owners().get(key)
        if settings:
            others = ", ".join(m.name for m, _ in settings)
            raise UserError(f"{key} does not apply to method {method.name}, which trains on {modality.unit} "
                            f"(it is a setting of {others} methods)")
        raise UserError(f"unknown setting {key!r}")


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
