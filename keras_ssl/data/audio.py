"""Audio sources: WAV folders as 16 kHz mono float waveforms of one fixed length.

    dataset = load_audio_folder("folder:data/spoken_digits", seconds=1.0)
    dataset.train.waveforms   # float32 [N, 16000] in [-1, 1]
    dataset.train.labels      # int32 [N] (one sub-folder per class), or None
    dataset.train.speakers    # int32 [N] from speakers.csv, or None
    dataset.train.paths       # str [N]: the file each waveform was read from

Layout of `folder:PATH`: WAV files in one sub-folder per class (or flat =
unlabelled); `train/` and `test/` sub-folders are the splits when present,
otherwise a fixed random 10% (seed 0) is held out, as for image folders. An
optional `speakers.csv` in PATH (`path,speaker` rows, paths relative to
PATH) gives every file a speaker label; a row with an empty speaker is
refused, rows naming no file in PATH are ignored with a warning. Files that
are not read (images, text, WAVs outside the class folders) are counted in
one warning.

Every file is read with `scipy.io.wavfile` (8/16/24/32-bit PCM and float
WAV), mixed down to mono (mean of the channels), resampled to 16 kHz with a
polyphase filter (`scipy.signal.resample_poly`) and cut or zero-padded at the
end to `seconds`. 16 kHz mono is what CPC (van den Oord et al. 2018),
wav2vec 2.0 and HuBERT train on. An unreadable file is reported by path:
skipped with one warning naming every such file, or an error with
`on_corrupt="error"`; so is a file with NaN or Inf samples (float WAVs can
hold them, and one such clip makes the training loss NaN).
"""

import csv
import dataclasses
import math
import os
import warnings

import numpy as np

from keras_ssl.data.folders import warn_unread
from keras_ssl.data.splits import IndexedExamples, LabelledFacts
from keras_ssl.errors import UserError

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav",)
# A fixed length keeps batches rectangular; one second holds a spoken word.
DEFAULT_SECONDS = 1.0


@dataclasses.dataclass
class AudioSplit(IndexedExamples):
    """One split: `waveforms` float32 `[N, T]`, `labels` and `speakers` int32 `[N]` or None,
    `paths` str `[N]` (the file each waveform came from; None for TFDS sets)."""

    waveforms: np.ndarray
    labels: np.ndarray | None
    speakers: np.ndarray | None = None
    paths: np.ndarray | None = None


@dataclasses.dataclass
class AudioDataset(LabelledFacts):
    """A named audio dataset: train and test splits, class and speaker names."""

    name: str
    train: AudioSplit
    test: AudioSplit
    class_names: tuple = ()
    speaker_names: tuple = ()
    sample_rate: int = SAMPLE_RATE
    modality = "audio"

    @property
    def num_samples(self):
        """T, the samples per waveform."""
        return int(self.train.waveforms.shape[1])

    @property
    def input_shape(self):
        """The shape of one model input (every dataset has it): `(T,)`."""
        return (self.num_samples,)


def to_mono_float(samples):
    """WAV samples (int PCM or float, `[T]` or `[T, channels]`) -> float32 `[T]` in [-1, 1]."""
    samples = np.asarray(samples)
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        x = (samples.astype(np.float32) - 128.0) / 128.0
    elif samples.dtype.kind == "i":
        x = samples.astype(np.float32) / float(2 ** (8 * samples.dtype.itemsize - 1))
    else:
        x = samples.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return x


def resample(x, rate, target=SAMPLE_RATE):
    """`x` at `rate` Hz -> `target` Hz (polyphase, Kaiser window: scipy's default)."""
    if rate == target:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(x, target // g, int(rate) // g).astype(np.float32)


def fit_length(x, n):
    """Cut to, or zero-pad at the end to, `n` samples."""
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def read_wav(path, num_samples=None):
    """A WAV file as 16 kHz mono float32 `[T]` (fit to `num_samples` when given)."""
    from scipy.io import wavfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on chunks it skips (LIST, fact)
        rate, samples = wavfile.read(path)
    if samples.size == 0:
        raise ValueError("no samples")
    x = resample(to_mono_float(samples), rate)
    return fit_length(x, num_samples) if num_samples else x


def _list_wavs(directory):
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.lower().endswith(AUDIO_EXTENSIONS) and os.path.isfile(os.path.join(directory, f)))


def is_audio_folder(path):
    """True when PATH (or its train/, class or train/class sub-folders) holds WAV files."""
    if not os.path.isdir(path):
        return False
    for root, dirs, files in os.walk(path):
        if any(f.lower().endswith(AUDIO_EXTENSIONS) for f in files):
            return True
        if os.path.relpath(root, path).count(os.sep) >= 1:
            dirs[:] = []
    return False


def _read_speakers(root):
    """`{absolute path: speaker name}` from `root/speakers.csv`, or None.

    A row with an empty speaker name is refused (it would become a speaker class
    called ""); rows naming no file inside `root` (a typo, a deleted clip,
    `../../etc/passwd`) are left out with one warning naming their line numbers."""
    path = os.path.join(root, "speakers.csv")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}; it must be CSV with columns path,speaker")
    if rows and not {"path", "speaker"} <= set(rows[0]):
        raise UserError(f"{path} must have the columns path,speaker (found {', '.join(rows[0])})")
    speakers, stray = {}, []
    top = os.path.realpath(root)
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name, relative = (row["speaker"] or "").strip(), row["path"] or ""
        if not name:
            raise UserError(f"{path} line {line} ({relative}) has an empty speaker name; give every clip a "
                            "speaker, or remove the row")
        full = os.path.normpath(os.path.join(root, relative))
        inside = os.path.commonpath([top, os.path.realpath(full)]) == top
        if not (inside and os.path.isfile(full)):
            stray.append(f"line {line} ({relative}{'' if inside else ', outside the folder'})")
            continue
        speakers[full] = name
    if stray:
        warnings.warn(f"{path}: {len(stray)} row(s) name no file in the folder and are ignored: "
                      + ", ".join(stray[:10]) + (", ..." if len(stray) > 10 else ""))
    return speakers


def why_unreadable(error):
    """A plain reason for an exception `read_wav` raised (scipy's own texts name its
    internals: `unpack requires a buffer of 16 bytes`, `cannot access local variable 'fs'`)."""
    import struct

    text = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, struct.error):
        return "truncated or damaged WAV header"
    if isinstance(error, EOFError):
        return "truncated WAV file"
    if isinstance(error, UnboundLocalError) or "No fmt chunk" in text:
        return "damaged WAV header: no fmt chunk before the samples"
    if "not understood" in text:
        return "not a WAV file (no RIFF/WAVE header)"
    if "header is invalid" in text:
        return "damaged WAV header: " + text.split(": ", 1)[-1]
    if isinstance(error, ValueError) and text in ("no samples", "NaN or Inf samples"):
        return text
    return f"unreadable: {text or type(error).__name__}"


def _decode(paths, num_samples, on_corrupt):
    waves, kept, bad, lengths = [], [], [], []
    for i, path in enumerate(paths):
        try:
            wave = read_wav(path)
            kept_part = fit_length(wave, num_samples)
            if not np.all(np.isfinite(kept_part)):  # float WAVs can hold them; one would make the loss NaN
                raise ValueError("NaN or Inf samples")
            waves.append(kept_part)
            lengths.append(len(wave))
            kept.append(i)
        except Exception as e:  # scipy raises ValueError, struct.error, EOFError... on damaged files
            bad.append(f"{path} ({why_unreadable(e)})")
    if bad:
        if on_corrupt == "error":
            raise UserError(f"{len(bad)} unreadable WAV file(s), first: {bad[0]}; remove or replace them, "
                            "or load with on_corrupt='skip'")
        warnings.warn(f"skipped {len(bad)} unreadable WAV file(s): " + "; ".join(bad[:20]))
    if not waves:
        raise UserError(f"none of the {len(paths)} WAV files can be read, e.g. {paths[0]}")
    median = float(np.median(lengths))
    if median < num_samples / 2:  # mostly padding: the clips' own sound is a small part of each example
        warnings.warn(f"most clips are much shorter than the clip length of {num_samples / SAMPLE_RATE:g} s "
                      f"(median {median / SAMPLE_RATE:.2f} s) and are zero-padded to it; set --audio_seconds "
                      "(or seconds=) near their length")
    return np.stack(waves).astype(np.float32), kept


def _folder_files(directory):
    classes = sorted(d for d in os.listdir(directory)
                     if os.path.isdir(os.path.join(directory, d)) and _list_wavs(os.path.join(directory, d)))
    if classes:
        paths, labels = [], []
        for index, c in enumerate(classes):
            files = _list_wavs(os.path.join(directory, c))
            paths += files
            labels += [index] * len(files)
        return paths, np.asarray(labels, np.int32), tuple(classes)
    paths = _list_wavs(directory)
    if not paths:
        raise UserError(f"no .wav files in {directory} or its sub-folders")
    return paths, None, ()


def load_audio_folder(spec, seconds=DEFAULT_SECONDS, on_corrupt="skip", test_fraction=0.1, seed=0):
    """`folder:PATH` of WAV files as an `AudioDataset`; see the module docstring."""
    path = spec[len("folder:"):] if spec.startswith("folder:") else spec
    if on_corrupt not in ("skip", "error"):
        raise UserError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if not os.path.isdir(path):
        raise UserError(f"folder {path!r} does not exist or is not a directory")
    if not seconds or seconds <= 0 or seconds > 60:
        raise UserError(f"audio clip length must be in (0, 60] seconds, got {seconds}")
    num_samples = int(round(seconds * SAMPLE_RATE))
    speaker_of = _read_speakers(path)
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        parts = [_folder_files(train_dir), _folder_files(test_dir)]
        if parts[0][2] != parts[1][2]:
            raise UserError(f"train/ and test/ of {path} have different class folders: {parts[0][2]} vs {parts[1][2]}")
    else:
        paths, labels, classes = _folder_files(path)
        order = np.random.default_rng(seed).permutation(len(paths))
        n_test = int(round(len(paths) * test_fraction))
        picks = [np.sort(order[n_test:]), np.sort(order[:n_test])]
        parts = [([paths[i] for i in idx], None if labels is None else labels[idx], classes) for idx in picks]
    speaker_names = ()
    if speaker_of is not None:
        speaker_names = tuple(sorted(set(speaker_of.values())))
    warn_unread(path, [p for paths, _, _ in parts for p in paths],
                "audio: only .wav files" + (" in the class folders" if parts[0][2] else ""))
    splits = []
    for paths, labels, _ in parts:
        if not paths:
            splits.append(AudioSplit(np.zeros((0, num_samples), np.float32), None if labels is None else labels[:0],
                                     None if speaker_of is None else np.zeros(0, np.int32), np.zeros(0, str)))
            continue
        waves, kept = _decode(paths, num_samples, on_corrupt)
        speakers = None
        if speaker_of is not None:
            missing = [p for p in paths if os.path.normpath(p) not in speaker_of]
            if missing:
                raise UserError(f"{os.path.join(path, 'speakers.csv')} has no row for {missing[0]} "
                                f"({len(missing)} files missing); add them or remove speakers.csv")
            index = {s: i for i, s in enumerate(speaker_names)}
            speakers = np.asarray([index[speaker_of[os.path.normpath(paths[i])]] for i in kept], np.int32)
        splits.append(AudioSplit(waves, None if labels is None else labels[kept], speakers,
                                 np.asarray([paths[i] for i in kept])))
    return AudioDataset(f"folder:{path}", splits[0], splits[1], parts[0][2], speaker_names)


def is_audio_builder(builder, tfds):
    """True when a TFDS builder's supervised input (or its `audio` feature) is TFDS audio."""
    audio_type = getattr(getattr(tfds, "features", None), "Audio", None)
    if audio_type is None:
        return False
    key = (builder.info.supervised_keys or ("audio",))[0]
    features = builder.info.features
    try:
        return key in features and isinstance(features[key], audio_type)
    except (TypeError, KeyError):
        return False


def load_tfds_audio(name, builder, train_split, test_split, seconds=DEFAULT_SECONDS, max_examples=None):
    """A TensorFlow Datasets audio set (e.g. `speech_commands`) as an `AudioDataset`.

    The builder's supervised input must be a `tfds.features.Audio` feature;
    every example is read one at a time (clips differ in length), scaled to
    [-1, 1] (integer PCM by its type's range), mixed to mono, resampled from
    the feature's `sample_rate` to 16 kHz and cut or zero-padded to `seconds`.
    Labels come from the supervised label (`ClassLabel` names), speakers from
    a `speaker_id` feature when the set has one. `max_examples` caps each split.
    """
    import tensorflow_datasets as tfds

    features = builder.info.features
    audio_key, label_key = builder.info.supervised_keys or ("audio", "label")
    audio_feature = features[audio_key]
    rate = int(getattr(audio_feature, "sample_rate", None) or SAMPLE_RATE)
    num_samples = int(round(seconds * SAMPLE_RATE))
    speaker_key = "speaker_id" if "speaker_id" in features else None
    speaker_names = {}

    def read(split):
        waves, labels, speakers = [], [], []
        dataset = builder.as_dataset(split=split)
        if max_examples:
            dataset = dataset.take(max_examples)
        for example in tfds.as_numpy(dataset):
            raw = np.asarray(example[audio_key])
            # TFDS's Audio feature stores 16-bit PCM as int64 by default: scale by the 16-bit range
            x = raw.astype(np.float32) / 32768.0 if raw.dtype == np.int64 else to_mono_float(raw)
            if x.ndim == 2:
                x = x.mean(axis=1)
            waves.append(fit_length(resample(x, rate), num_samples))
            labels.append(int(example[label_key]))
            if speaker_key:
                speaker = example[speaker_key]
                speaker = speaker.decode() if isinstance(speaker, bytes) else str(speaker)
                speakers.append(speaker_names.setdefault(speaker, len(speaker_names)))
        return AudioSplit(np.stack(waves).astype(np.float32) if waves else np.zeros((0, num_samples), np.float32),
                          np.asarray(labels, np.int32), np.asarray(speakers, np.int32) if speaker_key else None)

    train = read(train_split)
    test = read(test_split) if test_split else AudioSplit(train.waveforms[:0], train.labels[:0],
                                                          None if train.speakers is None else train.speakers[:0])
    class_names = tuple(getattr(features[label_key], "names", ()) or ())
    return AudioDataset(f"tfds:{name}", train, test, class_names, tuple(speaker_names))
