"""The run directory: a refused start leaves it free for the corrected rerun."""

import os

import pytest


def test_a_refused_start_does_not_claim_its_model_dir(tmp_path):
    # config.json used to be written before the data checks, so the corrected rerun was refused
    # as "a different run" in its own directory.
    from keras_ssl.errors import UserError
    from keras_ssl.training import TrainConfig, train

    model_dir = str(tmp_path / "run")
    common = dict(dataset="digits", method="rotation", augment="none", width_multiplier=0.25, epochs=1,
                  steps_per_epoch=1, dtype_policy="float32", model_dir=model_dir, verbose=0)
    with pytest.raises(UserError, match="fewer than one batch"):
        train(TrainConfig(batch_size=5000, **common))
    assert not os.path.exists(os.path.join(model_dir, "config.json"))
    result = train(TrainConfig(batch_size=16, **common))
    assert result["epochs_run"] == 1 and os.path.exists(os.path.join(model_dir, "config.json"))


def test_a_run_stored_before_an_option_existed_keeps_its_old_behaviour(tmp_path):
    # RotNet's online probe came later: a config.json without `online_probe` is a run without one
    # (its checkpoints hold no probe), and a new run (flags, code) gets the probe by default.
    import json

    from keras_ssl.config import TrainConfig
    from keras_ssl.run_directory import read_config

    stored = TrainConfig(method="rotation", dataset="digits", model_dir=str(tmp_path)).to_dict()
    del stored["online_probe"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert read_config(str(tmp_path)).options.online_probe is False
    assert TrainConfig.from_dict({"method": "rotation"}).options.online_probe is True


def _tiny_model():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense"),
                              keras.layers.BatchNormalization(name="bn")])
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.mark.parametrize("variable, value", [("dense/kernel", float("nan")), ("bn/moving_variance", float("inf")),
                                             ("dense/bias", 1e7)])
def test_bad_weights_stop_training_even_when_the_logged_loss_is_finite(tmp_path, variable, value):
    """The epoch checkpoint looks at the weights as well as the logs: one NaN, Inf or exploded
    weight (a non-trainable batch-norm statistic too) under a finite loss stops the run unsaved."""
    import numpy as np

    from keras_ssl.run_directory import epoch_checkpoint_callback

    model = _tiny_model()
    target = next(v for v in model.weights if v.path.endswith(variable))
    bad = np.asarray(target.numpy()).copy()
    bad.flat[0] = value
    target.assign(bad)
    callback = epoch_checkpoint_callback(str(tmp_path), keep=2)
    callback.set_model(model)
    callback.on_epoch_end(4, {"loss": 0.25, "accuracy": 0.5})
    assert callback.diverged is not None, (variable, value)
    epoch, why = callback.diverged
    assert epoch == 5 and variable in why and "1 NaN/Inf" in why and "loss" not in why, why
    assert model.stop_training
    assert not list(tmp_path.glob("checkpoints/*.h5"))


def test_healthy_epochs_are_saved_and_bad_logs_stop_training(tmp_path):
    from keras_ssl.run_directory import epoch_checkpoint_callback

    model = _tiny_model()
    callback = epoch_checkpoint_callback(str(tmp_path), keep=2)
    callback.set_model(model)
    callback.on_epoch_end(0, {"loss": 0.25})
    assert callback.diverged is None and not model.stop_training
    assert [p.name for p in tmp_path.glob("checkpoints/*.h5")] == ["epoch_0001.weights.h5"]
    callback.on_epoch_end(1, {"loss": float("nan")})
    assert callback.diverged == (2, "loss=nan") and model.stop_training
    assert [p.name for p in tmp_path.glob("checkpoints/*.h5")] == ["epoch_0001.weights.h5"]
