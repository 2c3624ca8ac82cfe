"""The `Modality` base class and the registry of modalities."""

import dataclasses

from keras_ssl.errors import UserError
from keras_ssl.options import make_options

_REGISTRY = {}


@dataclasses.dataclass
class NoSettings:
    """The settings of a modality that has none."""


class Modality:
    """One kind of example (images, audio clips), as the rest of keras_ssl sees it.

    Attributes:
      name: what methods declare (`Method.modality`) and datasets carry
        (`dataset.modality`).
      unit: the plural noun of one example in messages and rates ("images").
      encoders: the `--encoder` names of this modality; `default_encoder` is the
        one a run gets when `--encoder` is not given.
      settings: the dataclass of the run settings of this modality's methods
        (`image_size`, `audio_seconds`), its fields made with
        `keras_ssl.options.option`: each becomes a flag of `keras-ssl-train`
        and a flat key of `TrainConfig.from_dict` and `config.json`, and a run
        holds its values as `TrainConfig.settings`.
    """

    name = None
    unit = None
    encoders = ()
    default_encoder = None
    settings = NoSettings
    # The modality a `folder:` or `tfds:` set is read as when no other recognises it (images).
    folder_fallback = False

    def make_settings(self, values=None):
        """The settings dataclass from a dict of its keys (others refused)."""
        return make_options(self.settings, values, f"{self.name} methods")

    def check_run(self, config):
        """A `UserError` for settings this run's method cannot train with (e.g.
        no augmentation for a method whose views need it); nothing by default."""

    # -- data ------------------------------------------------------------------

    def recognises_folder(self, path):
        """True when `folder:PATH` holds this modality's files (e.g. `.wav` clips)."""
        return False

    def load_folder(self, spec, on_corrupt="skip", **settings):
        """`folder:PATH` as a dataset of this modality; `settings`: the loader settings
        `load_source` was given (`image_size`, `audio_seconds`, ...), each modality
        taking its own."""
        raise NotImplementedError

    def recognises_tfds(self, builder, tfds):
        """True when a TFDS builder's supervised input is of this modality (audio)."""
        return False

    def load_tfds(self, name, builder, train_split, test_split, **settings):
        """A TFDS builder's splits as a dataset of this modality."""
        raise NotImplementedError

    # The dataset names this modality reads itself (`text:PATH`, `fortunes`), as `load_source`'s
    # error lists them; `recognises_name`/`load_named` read them.
    named_sources = ()

    def recognises_name(self, spec):
        """True when `--dataset=spec` is one of this modality's own sources (`named_sources`)."""
        return False

    def load_named(self, spec, data_dir=None, on_corrupt="skip", **settings):
        """A dataset of this modality by its own name (`recognises_name`)."""
        raise NotImplementedError

    def converted(self, dataset, **settings):
        """A loaded dataset brought to the loader settings (images: resized, channels
        converted); unchanged by default."""
        return dataset

    def load_run_dataset(self, config, dataset=None, data_dir=None, input_shape=None):
        """The run's dataset (or `dataset`/`data_dir` instead) as the run trains on it;
        `input_shape`: the shape a kept model takes (export, evaluation), when it
        fixes what the run's settings leave open (e.g. an image size)."""
        raise NotImplementedError

    def examples(self, split):
        """The model inputs of a split (uint8 images, float waveforms), as an array."""
        raise NotImplementedError

    def describe_examples(self, dataset, count):
        """`60,000 images 28x28x1` / `2,880 clips of 1.0 s at 16 kHz`."""
        raise NotImplementedError

    # -- model inputs: the input adapter of `MethodModel` (its `MODALITY`) --------

    # The rank of a batch of model inputs (images [B, H, W, C]: 4; waveforms [B, T]: 2).
    input_rank = None

    def check_batch(self, model, shape, dtype):
        """One `UserError` unless `shape`/`dtype` is a batch `model` takes (called
        by `predict`, `fit` and the step, before Keras traces anything)."""
        raise NotImplementedError

    def as_model_input(self, batch):
        """A checked batch as the encoder takes it (images: float in [0, 1])."""
        import tensorflow as tf

        return tf.cast(batch, tf.float32)

    def zero_input(self, input_shape):
        """A batch of one all-zero example (shape inference: a representation's width)."""
        import tensorflow as tf

        return tf.zeros([1, *input_shape])

    def embedding_endpoints(self, embed, dim):
        """A model's default signatures: its inputs -> the `embedding`
        (`keras_ssl.models.endpoints`)."""
        raise NotImplementedError

    # -- models ----------------------------------------------------------------

    def build_encoder(self, config, dataset, size_agnostic=False):
        """The run's encoder (`config.encoder`, `config.width_multiplier`) for
        `dataset`'s examples; `size_agnostic`: for a method that trains on crops
        (patches) of the examples."""
        raise NotImplementedError

    def encoder_to_keep(self, config, encoder, dataset):
        """What `encoder.keras` holds: Keras's own layers only (it loads without
        keras_ssl), taking the dataset's examples."""
        raise NotImplementedError

    def serving_input_shape(self, config, model_dir):
        """The shape (after the batch axis) of the examples the export is served at."""
        raise NotImplementedError

    # -- evaluation and tests ---------------------------------------------------

    def evaluate_labelled(self, config, model, model_dir, dataset, request):
        """The frozen-feature evaluation of a run on a labelled `dataset` (the declared
        evaluation `probe`): its results (plots written to `request.output_dir`);
        `request` holds the evaluator's settings
        (`keras_ssl.evaluation.request.EvaluationRequest`)."""
        raise NotImplementedError

    def check_request(self, request):
        """Refuses (one UserError line) evaluator settings this modality cannot honour: by
        default a chosen spatial reading (`request.grid_reading` other than "auto" or None),
        which only an image encoder's feature maps give."""
        if request.grid_reading not in ("auto", None):
            raise UserError(f"a grid reading ({request.grid_reading}) reads an image encoder's feature maps; this is "
                            f"a {self.name} run (leave the grid reading out)")

    def format_report(self, results):
        """The printed table of a labelled report."""
        from keras_ssl.evaluation.report import format_table

        return format_table(results)

    def unlabelled_features(self, model, encoder, split):
        """`[N, D]` features of `split` for the label-free report (clusters, plot)."""
        raise NotImplementedError

    def neighbours_plot(self, split, features, path):
        """A picture of test examples beside their nearest neighbours (cosine on
        `features`) written to `path`, or None where examples cannot be shown."""
        return None

    def serving_facts(self, input_shape):
        """What the export's `preprocessing.json` says of the model's inputs (their size,
        rate, preprocessing)."""
        return {}

    def smoke_dataset(self, root):
        """Run settings giving a method of this modality a tiny dataset (the contract
        test's), written under `root` if it needs files."""
        raise NotImplementedError


def register(modality):
    """Adds `modality` (an instance of a `Modality` subclass) to the registry."""
    if modality.name in _REGISTRY and _REGISTRY[modality.name] is not modality:
        raise ValueError(f"modality {modality.name!r} is registered twice")
    _REGISTRY[modality.name] = modality
    return modality


def get(name):
    """The registered `Modality` called `name`, or a `UserError` listing them."""
    import keras_ssl.modalities  # noqa: F401  (each module registers itself)

    if name not in _REGISTRY:
        raise UserError(f"modality must be one of {', '.join(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def names():
    import keras_ssl.modalities  # noqa: F401

    return tuple(_REGISTRY)


def _recognising(recognises):
    """The first modality for which `recognises(modality)` holds, else the fallback (images)."""
    import keras_ssl.modalities  # noqa: F401

    for modality in _REGISTRY.values():
        if not modality.folder_fallback and recognises(modality):
            return modality
    return next(m for m in _REGISTRY.values() if m.folder_fallback)


def for_folder(path):
    """The `Modality` that reads `folder:PATH`: the first that recognises its files, else
    the fallback (images)."""
    return _recognising(lambda m: m.recognises_folder(path))


def for_tfds(builder, tfds):
    """The `Modality` that reads a TFDS builder: the first that recognises its features,
    else the fallback (images)."""
    return _recognising(lambda m: m.recognises_tfds(builder, tfds))


def for_name(spec):
    """The `Modality` that reads `--dataset=spec` by its own name (`text:PATH`), or None."""
    import keras_ssl.modalities  # noqa: F401

    return next((m for m in _REGISTRY.values() if m.recognises_name(spec)), None)


def setting_owners():
    """`{setting name: [(modality, field), ...]}` over every modality: one flag per name."""
    owners = {}
    for name in names():
        modality = _REGISTRY[name]
        for f in dataclasses.fields(modality.settings):
            owners.setdefault(f.name, []).append((modality, f))
    return owners


def of_dataset(dataset):
    """The `Modality` of a loaded dataset (its `modality` attribute)."""
    return get(dataset.modality)
