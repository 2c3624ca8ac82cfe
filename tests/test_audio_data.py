"""Audio sources (issue 15): WAV folders at 16 kHz mono, speakers, damaged files, the
synthetic spoken digits."""

import os
import shutil

import numpy as np
import pytest
from scipy.io import wavfile

from keras_ssl.data.audio import SAMPLE_RATE, is_audio_folder, load_audio_folder, read_wav
from keras_ssl.errors import UserError


def _write(path, rate, samples):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wavfile.write(path, rate, samples)


def test_read_wav_resamples_mixes_down_and_scales(tmp_path):
    t = np.arange(22050) / 22050.0
    tone = np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1)
    _write(str(tmp_path / "a.wav"), 22050, np.round(stereo * 16384).astype(np.int16))
    x = read_wav(str(tmp_path / "a.wav"))
    assert x.dtype == np.float32 and x.shape == (SAMPLE_RATE,)  # one second at 16 kHz
    assert abs(np.max(np.abs(x)) - 0.5) < 0.02  # int16 full scale is 1.0
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(x) - 440) < 2  # still 440 Hz after resampling
    _write(str(tmp_path / "b.wav"), 8000, np.full(4000, 200, np.uint8))  # 8-bit unsigned, half a second
    y = read_wav(str(tmp_path / "b.wav"), num_samples=16000)
    assert y.shape == (16000,) and np.allclose(y[200:7800], 72 / 128, atol=0.01) and np.all(y[8100:] == 0)


def test_folder_with_classes_speakers_and_a_damaged_file(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,speaker"]
    for split in ("train", "test"):
        for word in ("no", "yes"):
            for speaker in ("ann", "bob"):
                rel = f"{split}/{word}/{speaker}.wav"
                _write(str(tmp_path / rel), 16000, (rng.normal(size=12000) * 3000).astype(np.int16))
                rows.append(f"{rel},{speaker}")
    (tmp_path / "speakers.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train" / "no" / "zz_broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    rows.append("train/no/zz_broken.wav,ann")
    (tmp_path / "speakers.csv").write_text("\n".join(rows) + "\n")
    assert is_audio_folder(str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 1 unreadable WAV file.*zz_broken.wav"):
        ds = load_audio_folder(f"folder:{tmp_path}", seconds=0.5)
    assert ds.train.waveforms.shape == (4, 8000) and ds.test.waveforms.shape == (4, 8000)
    assert ds.class_names == ("no", "yes") and ds.speaker_names == ("ann", "bob")
    assert ds.train.labels.tolist() == [0, 0, 1, 1] and ds.train.speakers.tolist() == [0, 1, 0, 1]
    # the damaged file is skipped from paths too, so each path names its own waveform
    assert [os.path.relpath(p, tmp_path) for p in ds.train.paths] == [
        "train/no/ann.wav", "train/no/bob.wav", "train/yes/ann.wav", "train/yes/bob.wav"]
    assert ds.test.select(ds.test.speakers == 1).paths.tolist() == [
        str(tmp_path / "test/no/bob.wav"), str(tmp_path / "test/yes/bob.wav")]
    with pytest.raises(UserError, match="1 unreadable WAV file.*zz_broken.wav"):
        load_audio_folder(f"folder:{tmp_path}", on_corrupt="error")
    os.remove(tmp_path / "train" / "no" / "zz_broken.wav")
    (tmp_path / "speakers.csv").write_text("\n".join(rows[:3]) + "\n")
    with pytest.raises(UserError, match="speakers.csv has no row for"):
        load_audio_folder(f"folder:{tmp_path}")
    with pytest.raises(UserError, match="clip length must be in"):
        load_audio_folder(f"folder:{tmp_path}", seconds=0)


def test_clips_with_nan_or_inf_are_skipped_by_path_and_an_empty_folder_says_what_it_lacks(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        _write(str(tmp_path / "sounds" / f"{name}.wav"), 16000, (rng.normal(size=8000) * 0.1).astype(np.float32))
    bad = (rng.normal(size=8000) * 0.1).astype(np.float32)
    bad[100], bad[200] = np.nan, np.inf
    _write(str(tmp_path / "sounds" / "b.wav"), 16000, bad)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable WAV file.*b\.wav \(NaN or Inf samples\)"):
        ds = load_audio_folder(f"folder:{tmp_path / 'sounds'}", seconds=0.5, test_fraction=0.0)
    assert len(ds.train) == 2 and np.all(np.isfinite(ds.train.waveforms))
    with pytest.raises(UserError, match="b.wav.*NaN or Inf"):
        load_audio_folder(f"folder:{tmp_path / 'sounds'}", on_corrupt="error")
    from keras_ssl.data import load_source

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no .*images \(nor \.wav audio\) in .*empty"):
        load_source(f"folder:{tmp_path / 'empty'}")


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_spoken_digits_subset_is_made_and_loads(tmp_path):
    from keras_ssl.data.spoken_digits import make_spoken_digits

    out = str(tmp_path / "sd")
    counts = make_spoken_digits(out, max_speakers=3, words=("one", "two", "three"), styles=2)
    assert counts["clips"] == 3 * 3 * 4 and counts["speakers"] == 3
    assert counts["train"] + counts["test"] == counts["clips"] and counts["test"] > 0
    assert "SYNTHETIC" in open(os.path.join(out, "README.txt")).read()
    ds = load_audio_folder(f"folder:{out}")
    assert ds.class_names == ("one", "three", "two") and len(ds.speaker_names) == 3
    assert len(ds.train) + len(ds.test) == counts["clips"]
    from keras_ssl.data.spoken_digits import clip_rendering  # each clip's (speed, pitch), read back from its name

    renderings = [clip_rendering(p) for p in np.concatenate([ds.train.paths, ds.test.paths])]
    assert sorted(set(renderings)) == [(0, 0), (0, 1), (1, 0), (1, 1)] and renderings.count((0, 0)) == 9
    assert clip_rendering("noise.wav") is None
    energy = np.sqrt(np.mean(ds.train.waveforms ** 2, axis=1))
    assert np.all(energy > 0.01)  # every clip holds sound
    again = make_spoken_digits(str(tmp_path / "sd2"), max_speakers=3, words=("one", "two", "three"), styles=2)
    assert again == counts  # the same split: a pure function of the options
    first = load_audio_folder(f"folder:{tmp_path / 'sd2'}")
    np.testing.assert_array_equal(first.train.waveforms, ds.train.waveforms)
    with pytest.raises(UserError, match="exists and is not empty"):
        make_spoken_digits(out, max_speakers=1)


def test_tfds_speech_commands_is_an_audio_source():
    # TFDS's own builder for speech_commands, with its examples mocked (no download): the
    # real feature spec (int16 clips of any length, 12 named classes) through load_source.
    tfds = pytest.importorskip("tensorflow_datasets")
    from keras_ssl.data import load_source

    with tfds.testing.mock_data(num_examples=6):
        ds = load_source("tfds:speech_commands", audio_seconds=0.5)
    assert ds.modality == "audio" and ds.name == "tfds:speech_commands"
    assert ds.train.waveforms.shape == (6, 8000) and ds.train.waveforms.dtype == np.float32
    assert np.abs(ds.train.waveforms).max() <= 1.0 and np.abs(ds.train.waveforms).max() > 0
    assert len(ds.class_names) == 12 and "yes" in ds.class_names
    assert ds.train.labels.dtype == np.int32 and set(ds.train.labels) <= set(range(12))


def test_tfds_audio_rates_and_speakers_are_converted():
    # A TFDS-like builder at 8 kHz stereo int64 with speaker ids: resampled, mixed down, scaled.
    from keras_ssl.data.audio import load_tfds_audio

    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    t = np.arange(8000) / 8000.0
    tone = (np.sin(2 * np.pi * 440 * t) * 16384).astype(np.int64)
    examples = {"audio": np.stack([np.stack([tone, tone], 1)] * 3), "label": np.array([0, 1, 0]),
                "speaker_id": np.array([b"ann", b"bob", b"ann"])}

    class Builder:
        class info:
            supervised_keys = ("audio", "label")
            features = {"audio": tfds.features.Audio(shape=(None, 2), dtype=np.int64, sample_rate=8000),
                        "label": tfds.features.ClassLabel(names=["no", "yes"]), "speaker_id": None}

        def as_dataset(self, split):
            return tf.data.Dataset.from_tensor_slices(examples)

    ds = load_tfds_audio("toy", Builder(), "train", None, seconds=0.5)
    assert ds.train.waveforms.shape == (3, 8000) and ds.class_names == ("no", "yes")
    assert ds.train.speakers.tolist() == [0, 1, 0] and ds.speaker_names == ("ann", "bob")
    np.testing.assert_allclose(np.abs(ds.train.waveforms[0, 1000:7000]).max(), 0.5, atol=0.02)  # 16384 / 32768
    assert len(ds.test) == 0


def test_clips_much_shorter_than_the_clip_length_are_padded_with_a_warning(tmp_path):
    for i in range(3):
        _write(str(tmp_path / "short" / f"{i}.wav"), 16000, np.full(800, 1000, np.int16))  # 0.05 s
    with pytest.warns(UserWarning, match=r"clip length of 1 s \(median 0.05 s\).*set --audio_seconds"):
        ds = load_audio_folder(f"folder:{tmp_path / 'short'}", seconds=1.0, test_fraction=0.0)
    assert ds.train.waveforms.shape == (3, 16000) and not ds.train.waveforms[:, 800:].any()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio_folder(f"folder:{tmp_path / 'short'}", seconds=0.06, test_fraction=0.0)
