"""Loading keras_ssl's `.keras` files: every registered class imported first."""

import keras


def load_model(path, **kwargs):
    """`keras.models.load_model` after importing every keras_ssl class a file may name
    (layers, models, losses, LARS and its schedule), so a `.keras` file always loads."""
    import keras_ssl.layers  # noqa: F401
    import keras_ssl.losses  # noqa: F401
    import keras_ssl.models  # noqa: F401
    import keras_ssl.optimizers  # noqa: F401

    return keras.models.load_model(path, **kwargs)
