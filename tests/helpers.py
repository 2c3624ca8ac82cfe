"""Shared test helpers: a guard that blocks keras/keras_ssl imports in a serving
subprocess, and a tiny labelled WAV folder for the audio methods."""

import os
import textwrap

import numpy as np

# Prepended to a `python -c` script: importing keras or keras_ssl fails there, so what
# the script serves is the SavedModel alone (as TF Serving would).
BLOCK_KERAS = textwrap.dedent('''
    import importlib.abc, importlib.util, json, sys
    class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("keras_ssl", "keras"):
                return importlib.util.spec_from_loader(name, self)  # no origin: "not installed"
        def create_module(self, spec):
            raise ImportError("blocked: " + spec.name)
        def exec_module(self, module):
            raise ImportError("blocked")
    sys.meta_path.insert(0, Block())
''')


def chirp(f0, rate, samples, rng, noise=0.05):
    """A frequency sweep from f0 Hz at `rate` Hz/s, 16 kHz, with white noise, float32."""
    t = np.arange(samples) / 16000.0
    return (0.5 * np.sin(2 * np.pi * (f0 * t + 0.5 * rate * t ** 2)) + noise * rng.normal(size=samples)).astype(
        np.float32)


def write_chirp_folder(root, per_class=12, seconds=0.25, seed=0):
    """`root/{train,test}/{down,flat,up}/*.wav` (16-bit PCM, 16 kHz) and `speakers.csv`
    (two "speakers": a low and a high start frequency); a quarter of the clips is test.
    Returns `folder:root`."""
    from scipy.io import wavfile

    rng = np.random.default_rng(seed)
    samples = int(seconds * 16000)
    rows = ["path,speaker"]
    for word, rate in (("down", -3000.0), ("flat", 0.0), ("up", 3000.0)):
        for i in range(per_class):
            speaker = ("low", "high")[i % 2]
            split = "test" if i % 4 == 3 else "train"
            f0 = rng.uniform(300, 600) if speaker == "low" else rng.uniform(1200, 1500)
            x = chirp(f0, rate * rng.uniform(0.7, 1.3), samples, rng)
            relative = f"{split}/{word}/{speaker}_{i:03d}.wav"
            os.makedirs(os.path.join(root, split, word), exist_ok=True)
            wavfile.write(os.path.join(root, relative), 16000, np.round(np.clip(x, -1, 1) * 32767).astype(np.int16))
            rows.append(f"{relative},{speaker}")
    with open(os.path.join(root, "speakers.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return f"folder:{root}"


def smoke_config(method_name, root, **extra):
    """A `TrainConfig` for the registered method on its tiny settings (`smoke_options`,
    the 8x8 digits or a chirp folder under `root`), plus `extra`."""
    from keras_ssl.models import registry
    from keras_ssl.training import TrainConfig

    method = registry.get(method_name)
    return TrainConfig.from_dict({"method": method_name, "dataset": "digits", "width_multiplier": 0.25,
                                  "model_dir": "unused", **method.smoke_options, **smoke_dataset(method, root),
                                  **extra})


def smoke_dataset(method, root):
    """The run settings that give `method` its tiny dataset: nothing for image methods
    (the 8x8 digits of the tests' base settings), a chirp folder under `root` for audio."""
    if method.modality == "audio":
        return {"dataset": write_chirp_folder(os.path.join(str(root), "chirps"))}
    return {}
