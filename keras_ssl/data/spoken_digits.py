"""A synthetic spoken-digits set, made offline with Debian's speech synthesisers.

    make_spoken_digits("data/spoken_digits")          # ~2,500 clips in about a minute
    load_audio_folder("folder:data/spoken_digits")    # word labels + speaker labels

SYNTHETIC: every clip is a speech synthesiser's output, not a human voice.
It stands in for a spoken-digits corpus (e.g. Speech Commands' digits) on a
machine without network access; figures measured on it are not figures on
human speech.

The ten words "zero" .. "nine", each spoken by every *speaker* at several
speeds and pitches. A speaker is one synthesiser voice: an espeak-ng accent
(en-us, en-gb, en-gb-scotland, en-029, ...) combined with an espeak-ng voice
variant (m1, f2, klatt, ...), or a flite voice (awb, rms, slt, kal16). Each
clip gets a random lead-in of 0-200 ms and white noise at a random SNR of
10-30 dB, and is stored as 16 kHz mono 16-bit WAV.

Layout: `train/<word>/<speaker>_s<speed>_p<pitch>.wav`, `test/...`, the
speakers in `speakers.csv` (`path,speaker`) and a `README.txt`. The split is
by utterance: a fixed random 20% of the clips (seed 0) is the test split, so
the same speakers and words are in both (what the word and speaker probes
need). The whole set is a pure function of the options and the installed
synthesisers' versions (recorded in README.txt).
"""

import csv
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from keras_ssl.data.audio import SAMPLE_RATE, read_wav
from keras_ssl.errors import UserError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m3", "m7", "f2", "f4", "klatt")
FLITE_VOICES = ("awb", "rms", "slt", "kal16")
_CLIP_NAME = re.compile(r"_s(\d+)_p(\d+)\.wav$", re.IGNORECASE)


def clip_name(speaker, speed, pitch):
    """The file name of one clip: `<speaker>_s<speed>_p<pitch>.wav`."""
    return f"{speaker}_s{speed}_p{pitch}.wav"


def clip_rendering(path):
    """`(speed, pitch)` style indices from a clip's file name, or None when it is not named so."""
    found = _CLIP_NAME.search(str(path))
    return None if found is None else (int(found.group(1)), int(found.group(2)))
# espeak-ng words per minute and pitch (0-99); flite duration stretch and pitch mean (Hz).
ESPEAK_SPEEDS = (130, 165, 200)
ESPEAK_PITCHES = (35, 50, 65)
FLITE_STRETCH = (1.25, 1.0, 0.8)
FLITE_PITCH = (90, 120, 160)
TEST_FRACTION = 0.2


def available_speakers(max_speakers=None):
    """The speakers this machine can voice: `[(name, synthesiser, voice)]`."""
    speakers = []
    if shutil.which("espeak-ng"):
        for accent in ESPEAK_ACCENTS:
            for variant in ESPEAK_VARIANTS:
                speakers.append((f"espeak-{accent}-{variant}", "espeak-ng", f"{accent}+{variant}"))
    if shutil.which("flite"):
        for voice in FLITE_VOICES:
            speakers.append((f"flite-{voice}", "flite", voice))
    if not speakers:
        raise UserError("no speech synthesiser found; install them with `apt-get install -y espeak-ng flite`")
    return speakers[:max_speakers] if max_speakers else speakers


def _synthesise(word, synthesiser, voice, style, path):
    if synthesiser == "espeak-ng":
        command = ["espeak-ng", "-v", voice, "-s", str(ESPEAK_SPEEDS[style[0]]), "-p",
                   str(ESPEAK_PITCHES[style[1]]), "-w", path, word]
    else:
        command = ["flite", "-voice", voice, "--setf", f"duration_stretch={FLITE_STRETCH[style[0]]}",
                   "--setf", f"int_f0_target_mean={FLITE_PITCH[style[1]]}", "-t", word, "-o", path]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(path):
        raise UserError(f"{' '.join(command)} failed: {result.stderr.strip()[:200]}")


def _add_lead_and_noise(x, rng):
    lead = np.zeros(int(rng.uniform(0.0, 0.2) * SAMPLE_RATE), np.float32)
    x = np.concatenate([lead, x / max(1e-6, float(np.max(np.abs(x)))) * 0.8])
    snr_db = rng.uniform(10.0, 30.0)
    signal_power = float(np.mean(x[len(lead):] ** 2))
    noise = rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(signal_power / 10 ** (snr_db / 10))
    return np.clip(x + noise, -1.0, 1.0)


def _versions():
    lines = []
    for tool, flag in (("espeak-ng", "--version"), ("flite", "--version")):
        if shutil.which(tool):
            out = subprocess.run([tool, flag], capture_output=True, text=True).stdout.strip().splitlines()
            lines.append(f"{tool}: {out[0] if out else 'unknown version'}")
    return lines


def make_spoken_digits(output_dir, max_speakers=None, words=WORDS, styles=3, seed=0, overwrite=False):
    """Writes the set into `output_dir` (made atomically: a temporary folder renamed
    at the end); returns `{"clips", "speakers", "train", "test"}` counts.

    `max_speakers` and `styles` (speeds x pitches per side, 1-3) make small
    subsets for tests; the defaults give every available speaker x 10 words x
    9 styles.
    """
    if os.path.exists(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise UserError(f"{output_dir} exists and is not empty; pass overwrite or choose another folder")
    if not 1 <= styles <= 3:
        raise UserError(f"styles must be 1, 2 or 3, got {styles}")
    speakers = available_speakers(max_speakers)
    rng = np.random.default_rng(seed)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".spoken-digits-", dir=parent)
    rows, counts = [], {"train": 0, "test": 0}
    try:
        scratch = os.path.join(tmp, "raw.wav")
        for name, synthesiser, voice in speakers:
            for word in words:
                for speed in range(styles):
                    for pitch in range(styles):
                        _synthesise(word, synthesiser, voice, (speed, pitch), scratch)
                        x = _add_lead_and_noise(read_wav(scratch), rng)
                        split = "test" if rng.uniform() < TEST_FRACTION else "train"
                        relative = os.path.join(split, word, clip_name(name, speed, pitch))
                        os.makedirs(os.path.join(tmp, split, word), exist_ok=True)
                        from scipy.io import wavfile

                        wavfile.write(os.path.join(tmp, relative), SAMPLE_RATE,
                                      np.round(x * 32767).astype(np.int16))
                        rows.append((relative, name))
                        counts[split] += 1
        os.remove(scratch)
        with open(os.path.join(tmp, "speakers.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "speaker"])
            writer.writerows(rows)
        with open(os.path.join(tmp, "README.txt"), "w") as f:
            f.write("SYNTHETIC spoken digits made by keras_ssl.data.spoken_digits (keras-ssl-make-spoken-digits):\n"
                    "speech synthesiser output, not human speech.\n"
                    f"{len(rows)} clips, {len(speakers)} speakers, words: {' '.join(words)}, "
                    f"{styles}x{styles} speeds x pitches, seed {seed}.\n" + "\n".join(_versions()) + "\n")
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"clips": len(rows), "speakers": len(speakers), **counts}
