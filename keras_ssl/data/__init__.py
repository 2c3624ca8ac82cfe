"""Data: sources by name, augmentations, and per-method view builders."""

from keras_ssl.data.augment import PRESETS, AugmentConfig, get_preset, simclr_augment, to_float01
from keras_ssl.data.sources import ImageDataset, Split, load_source
from keras_ssl.data.views import eval_batches, simclr_views
from keras_ssl.data.visualize import save_view_grid

__all__ = [
    "PRESETS", "AugmentConfig", "get_preset", "simclr_augment", "to_float01",
    "ImageDataset", "Split", "load_source", "eval_batches", "simclr_views", "save_view_grid",
]
