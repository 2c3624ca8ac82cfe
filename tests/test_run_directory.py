"""The run directory: a refused start leaves it free for the corrected rerun."""

import os

import pytest


def test_a_refused_start_does_not_claim_its_model_dir(tmp_path):
    # config.json used to be written before the data checks, so the corrected rerun was refused
    # as "a different run" in its own directory.
    import keras

    from keras_ssl.errors import UserError
    from keras_ssl.training import TrainConfig, train

    model_dir = str(tmp_path / "run")
    common = dict(dataset="digits", method="rotation", augment="none", width_multiplier=0.25, epochs=1,
                  steps_per_epoch=1, dtype_policy="float32", model_dir=model_dir, verbose=0)
    with pytest.raises(UserError, match="fewer than one batch"):
        train(TrainConfig(batch_size=5000, **common))
    assert not os.path.exists(os.path.join(model_dir, "config.json"))
    try:
        result = train(TrainConfig(batch_size=16, **common))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result["epochs_run"] == 1 and os.path.exists(os.path.join(model_dir, "config.json"))
