"""The `Modality` base class and the registry of modalities."""

from keras_ssl.errors import UserError

_REGISTRY = {}


class Modality:
    """One kind of example (images, audio clips), as the rest of keras_ssl sees it.

    Attributes:
      name: what methods declare (`Method.modality`) and datasets carry
        (`dataset.modality`).
      unit: the plural noun of one example in messages and rates ("images").
      encoders: the `--encoder` names of this modality; `default_encoder` is the
        one a run gets when `--encoder` is not given.
    """

    name = None
    unit = None
    encoders = ()
    default_encoder = None
    # The modality a `folder:` is read as when no other recognises its files (images).
    folder_fallback = False

    # -- data ------------------------------------------------------------------

    def recognises_folder(self, path):
        """True when `folder:PATH` holds this modality's files (e.g. `.wav` clips)."""
        return False

    def load_folder(self, spec, *, image_size=None, channels=None, on_corrupt="skip", audio_seconds=None):
        """`folder:PATH` as a dataset of this modality (each takes the settings it has)."""
        raise NotImplementedError

    def converted(self, dataset, *, image_size=None, channels=None):
        """A loaded dataset brought to the run's settings (images: resized, channels
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


def for_folder(path):
    """The `Modality` that reads `folder:PATH`: the first that recognises its files, else
    the fallback (images)."""
    import keras_ssl.modalities  # noqa: F401

    for modality in _REGISTRY.values():
        if not modality.folder_fallback and modality.recognises_folder(path):
            return modality
    return next(m for m in _REGISTRY.values() if m.folder_fallback)


def of_dataset(dataset):
    """The `Modality` of a loaded dataset (its `modality` attribute)."""
    return get(dataset.modality)
