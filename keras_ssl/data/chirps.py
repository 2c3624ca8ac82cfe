"""A tiny synthetic audio set made on the spot: frequency sweeps ("chirps") in three
classes (down, flat, up) from two "speakers" (a low and a high start frequency).

It is the audio modality's smoke dataset (the contract test trains every audio
method on it in seconds), and a quick offline check that an audio pipeline runs:
a representation that hears pitch movement separates the classes.

    spec = write_chirp_folder("data/chirps")   # "folder:data/chirps"
"""

import os

import numpy as np

SAMPLE_RATE = 16000
# Hz per second of the sweep, by class; speakers start at 300-600 Hz (low) or 1200-1500 Hz (high)
SWEEP_RATES = (("down", -3000.0), ("flat", 0.0), ("up", 3000.0))


def chirp(f0, rate, samples, rng, noise=0.05):
    """A frequency sweep from `f0` Hz at `rate` Hz/s, 16 kHz, amplitude 0.5, with white
    noise of standard deviation `noise`, float32 `[samples]`."""
    t = np.arange(samples) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * (f0 * t + 0.5 * rate * t ** 2)) + noise * rng.normal(size=samples)).astype(
        np.float32)


def write_chirp_folder(root, per_class=12, seconds=0.25, seed=0):
    """`root/{train,test}/{down,flat,up}/*.wav` (16-bit PCM, 16 kHz) and `speakers.csv`
    (speakers `low` and `high`, alternating); every fourth clip is test. Returns
    `folder:root`."""
    from scipy.io import wavfile

    rng = np.random.default_rng(seed)
    samples = int(seconds * SAMPLE_RATE)
    rows = ["path,speaker"]
    for word, rate in SWEEP_RATES:
        for i in range(per_class):
            speaker = ("low", "high")[i % 2]
            split = "test" if i % 4 == 3 else "train"
            f0 = rng.uniform(300, 600) if speaker == "low" else rng.uniform(1200, 1500)
            x = chirp(f0, rate * rng.uniform(0.7, 1.3), samples, rng)
            relative = f"{split}/{word}/{speaker}_{i:03d}.wav"
            os.makedirs(os.path.join(root, split, word), exist_ok=True)
            wavfile.write(os.path.join(root, relative), SAMPLE_RATE,
                          np.round(np.clip(x, -1, 1) * 32767).astype(np.int16))
            rows.append(f"{relative},{speaker}")
    with open(os.path.join(root, "speakers.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return f"folder:{root}"
