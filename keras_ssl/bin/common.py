"""What every binary shares: user errors become one line and a non-zero exit."""

import os
import sys

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from keras_ssl.errors import UserError  # noqa: E402

EXIT_USER_ERROR = 2


def run_main(main):
    """`absl.app.run(main)`, printing a `UserError` as `error: <message>` (exit 2)."""

    def guarded(argv):
        import logging

        # TF's Python INFO lines (one per collective under multi-worker) drown the epoch lines.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    app.run(guarded)


def load_run(model_dir):
    """`(config, encoder_path)` of a finished training run, or a UserError."""
    from keras_ssl.training import read_config

    config = read_config(model_dir)
    encoder_path = os.path.join(model_dir, "encoder.keras")
    if not os.path.isfile(encoder_path):
        raise UserError(f"{encoder_path} not found; the run has not finished training")
    return config, encoder_path
