"""Loading keras_ssl's `.keras` files: every registered class imported first, and a
damaged file reported as one `UserError` naming it."""

import os

import keras

from keras_ssl.errors import UserError


def load_model(path, **kwargs):
    """`keras.models.load_model` after importing every keras_ssl class a file may name
    (layers, models, losses, LARS and its schedule), so a `.keras` file always loads.

    A missing, truncated or otherwise unreadable file is a `UserError` (Keras
    says "File not found" for a truncated file that exists)."""
    import keras_ssl.layers  # noqa: F401
    import keras_ssl.losses  # noqa: F401
    import keras_ssl.models  # noqa: F401
    import keras_ssl.optimizers  # noqa: F401

    if not os.path.isfile(path):
        raise UserError(f"{path} not found; the run has not finished training")
    try:
        return keras.models.load_model(path, **kwargs)
    except Exception as e:  # zip, h5 and config errors alike
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        # Keras says "File not found" for a truncated file that exists: leave that out
        detail = "" if "not found" in first.lower() else f" ({type(e).__name__}: {first})"
        raise UserError(f"{path} cannot be read{detail}; it is damaged or incomplete: "
                        "rerun keras-ssl-train on the run directory (it resumes from the last checkpoint and "
                        "writes it again)") from None
