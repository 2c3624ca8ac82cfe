"""Modality settings (`image_size`, `channels`, `cifar_stem`, `augment`, `audio_seconds`):
declared once in each modality's settings dataclass, with flags and `config.json` keys
generated from it."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_setting_is_a_flag_of_the_train_binary_with_the_declared_default_and_choices():
    from absl import flags

    import keras_ssl.bin.train  # noqa: F401  (defines the flags)
    from keras_ssl import modalities
    from keras_ssl.data.augment import PRESETS

    owners = modalities.setting_owners()
    assert {"image_size", "channels", "cifar_stem", "augment", "audio_seconds"} <= set(owners)
    for name, fields in owners.items():
        flag = flags.FLAGS[name]
        assert flag.default == fields[0][1].default, name
        assert fields[0][0].name + " methods" in flag.help, (name, flag.help)
    assert list(flags.FLAGS["augment"].parser.enum_values) == [*PRESETS, "none"]  # from the presets, not a hand list


def test_settings_are_flat_keys_of_the_run_config_and_belong_to_the_methods_modality():
    from keras_ssl.config import TrainConfig
    from keras_ssl.errors import UserError
    from keras_ssl.modalities.audio import AudioSettings
    from keras_ssl.modalities.image import ImageSettings

    image = TrainConfig.from_dict({"method": "rotation", "image_size": 32, "augment": "none"})
    assert isinstance(image.settings, ImageSettings) and image.settings.image_size == 32
    assert image.image_size == 32 and image.augment_preset is None  # read flat, as before
    image.augment = "cifar"  # written flat, lands in the settings
    assert image.settings.augment == "cifar" and "augment" not in vars(image)
    flat = image.to_dict()
    assert flat["image_size"] == 32 and "audio_seconds" not in flat and "settings" not in flat
    assert TrainConfig.from_dict(flat) == image

    audio = TrainConfig(method="cpc_audio", audio_seconds=0.5)  # flat in the constructor too
    assert audio.settings == AudioSettings(audio_seconds=0.5) and "augment" not in audio.to_dict()
    with pytest.raises(AttributeError, match="augment"):
        audio.augment

    with pytest.raises(UserError, match=r"^audio_seconds does not apply to method simclr, which trains on images "
                                        r"\(it is a setting of audio methods\)$"):
        TrainConfig.from_dict({"method": "simclr", "audio_seconds": 2.0})
    with pytest.raises(UserError, match="^image_size does not apply to method cpc_audio"):
        TrainConfig(method="cpc_audio", image_size=32)
    with pytest.raises(UserError, match="^unknown setting 'image_sise'"):
        TrainConfig.from_dict({"method": "simclr", "image_sise": 32})


@pytest.mark.parametrize("values, message", [
    ({"image_size": 4}, "image_size must be >= 8, got 4"),
    ({"channels": 2}, "channels must be 1 or 3, got 2"),
    ({"augment": "strong"}, "augment must be one of imagenet, cifar, fashion_mnist, weak, none, got 'strong'"),
    ({"augment": "none", "method": "simclr"}, "augment must be one of imagenet, cifar, fashion_mnist, weak for "
                                              "method simclr"),
    ({"method": "cpc_audio", "audio_seconds": 0.0}, r"audio_seconds must be in \(0, 60\], got 0.0"),
])
def test_a_bad_setting_is_refused_by_its_declared_check(values, message):
    from keras_ssl.config import TrainConfig
    from keras_ssl.errors import UserError

    with pytest.raises(UserError, match=message):
        TrainConfig.from_dict({"method": "rotation", **values}).validate()


def test_a_run_stored_with_every_settings_key_reads_back_with_its_own_modalitys(tmp_path):
    # Before the settings moved to the modalities, every config.json held all five keys,
    # an audio run's too; such a run resumes (check_resume sees no difference) and evaluates.
    from keras_ssl.config import TrainConfig
    from keras_ssl.run_directory import check_resume, read_config

    run = TrainConfig.from_dict({"method": "cpc_audio", "dataset": "folder:x", "audio_seconds": 0.5,
                                 "model_dir": str(tmp_path)})
    old = {**run.to_dict(), "image_size": None, "channels": None, "cifar_stem": True, "augment": "none"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    stored = read_config(str(tmp_path))
    assert stored == run and dataclasses.asdict(stored.settings) == {"audio_seconds": 0.5}
    check_resume(run)  # raises on a difference


def test_the_binary_refuses_another_modalitys_setting_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "keras_ssl.bin.train", "--method=simclr", "--dataset=digits",
                           "--audio_seconds=2", f"--model_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: audio_seconds does not apply to method simclr, which trains on images (it is a setting of audio "
        "methods)"], proc.stderr
    assert not os.path.exists(tmp_path / "run")


def test_settings_and_options_given_flat_to_the_constructor_or_replace_land_in_their_own_copy():
    from keras_ssl.config import TrainConfig

    base = TrainConfig(method="siamese", margin=0.5, augment="none")
    assert base.options.margin == 0.5 and base.settings.augment == "none"
    larger = dataclasses.replace(base, image_size=64, margin=0.7)  # worked when image_size was a field
    assert larger.image_size == 64 and larger.options.margin == 0.7
    assert base.image_size is None and base.options.margin == 0.5
    larger.augment = "cifar"  # the copy's settings are its own
    assert base.augment == "none"
    positional = TrainConfig("runs/x", "rotation", image_size=32)
    assert positional.model_dir == "runs/x" and positional.image_size == 32
    with pytest.raises(AttributeError, match="audio_seconds does not apply to method siamese"):
        base.audio_seconds = 2.0  # would be dropped from config.json without a word
    with pytest.raises(AttributeError, match="unknown setting 'imag_size'"):
        base.imag_size = 32
