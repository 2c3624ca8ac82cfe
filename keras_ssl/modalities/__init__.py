"""Modalities: what kind of examples a method trains on, declared once per kind.

A module here subclasses `Modality` (`keras_ssl.modalities.base`) and registers
one instance: its example unit, encoders and default encoder, its run settings
(a dataclass of `keras_ssl.options.option` fields: flags and `config.json` keys
generated from it), how its datasets
are recognised and loaded for a run, the encoder it builds and keeps, the model
inputs of a split, its default evaluation and the tiny dataset of the contract
test. Training, the binaries, evaluation and the exporter look a modality up
here (by a method's `modality` or a dataset's) and never branch on its name.

    from keras_ssl import modalities
    modalities.get("audio").unit          # "clips"
    modalities.of_dataset(dataset)        # the Modality of a loaded dataset

Adding a modality: one module here (and its source in `keras_ssl/data/`), imported
below so that it registers itself.
"""

from keras_ssl.modalities.base import (Modality, for_folder, for_name, for_tfds, get, names, of_dataset, register,
                                      setting_owners)

from keras_ssl.modalities import image  # noqa: E402,F401  (registers "image")
from keras_ssl.modalities import audio  # noqa: E402,F401  (registers "audio")
from keras_ssl.modalities import text  # noqa: E402,F401  (registers "text")
from keras_ssl.modalities import generative  # noqa: E402,F401  (the latent and seeds input kinds)
from keras_ssl.modalities import token_kinds  # noqa: E402,F401  (the tokens and text input kinds)

__all__ = ["Modality", "for_folder", "for_name", "for_tfds", "get", "names", "of_dataset", "register", "setting_owners"]
