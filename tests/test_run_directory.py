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
