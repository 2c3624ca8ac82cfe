"""One file per method; each a `keras.Model` subclass with train/test steps."""

from keras_ssl.models.simclr import SimCLR

METHODS = ("simclr",)

__all__ = ["SimCLR", "METHODS"]
