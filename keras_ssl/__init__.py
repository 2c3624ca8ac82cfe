"""keras_ssl: self-supervised and metric representation learning for Keras 3 / TensorFlow."""

__version__ = "0.1.0"
