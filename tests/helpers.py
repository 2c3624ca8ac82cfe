"""Shared test helpers: a guard that blocks keras/keras_ssl imports in a serving
subprocess, and the tiny settings every registered method is tried on."""

import os
import textwrap

from keras_ssl.data.chirps import chirp, write_chirp_folder  # noqa: F401  (the tests' audio)

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


def smoke_config(method_name, root, **extra):
    """A `TrainConfig` for the registered method on its tiny settings (`smoke_options`,
    the 8x8 digits or a chirp folder under `root`), plus `extra`."""
    from keras_ssl.models import registry
    from keras_ssl.training import TrainConfig

    method = registry.get(method_name)
    parent = {"parent_run": smoke_parent_run(method.parent, root)} if method.parent else {}
    return TrainConfig.from_dict({"method": method_name, "dataset": "digits", "width_multiplier": 0.25,
                                  "model_dir": "unused", **method.smoke_options, **smoke_dataset(method, root),
                                  **parent, **extra})


SMOKE_RUN = dict(width_multiplier=0.25, epochs=1, steps_per_epoch=2, optimizer="adam", learning_rate=1e-3,
                 lr_scaling="none", warmup_epochs=0.0, verbose=0, dtype_policy="float32")


def smoke_parent_run(method_name, root):
    """The run directory of a finished smoke run of `method_name` under `root` (trained
    once, then reused): the parent a stage's smoke config continues."""
    from keras_ssl.models import registry
    from keras_ssl.training import TrainConfig, train

    model_dir = os.path.join(str(root), f"parent_{method_name}")
    if not os.path.isfile(os.path.join(model_dir, "model.keras")):
        method = registry.get(method_name)
        train(TrainConfig.from_dict({"method": method_name, "model_dir": model_dir, **SMOKE_RUN,
                                     **method.smoke_options, **smoke_dataset(method, root)}))
    return model_dir


def library_methods():
    """The registered methods of keras_ssl itself (not the test-only ones of
    tests.toy_methods): what the README and the binaries' --help document."""
    from keras_ssl.models import registry

    return [m for m in registry.methods() if not m.build.__module__.startswith("tests.")]


def library_modalities():
    """The registered modalities of keras_ssl itself (not tests.toy_modality's)."""
    from keras_ssl import modalities

    return [modalities.get(n) for n in modalities.names()
            if not type(modalities.get(n)).__module__.startswith("tests.")]


def smoke_dataset(method, root):
    """The run settings that give `method` its tiny dataset: its modality's smoke
    dataset (the 8x8 digits for images, a chirp folder under `root` for audio)."""
    from keras_ssl import modalities

    return modalities.get(method.modality).smoke_dataset(str(root))


def speech_clips(n, samples=4000, seed=0):
    """`n` noisy linear chirps (300-1500 Hz, sweeping up to +-4 kHz/s), float32 `[n, samples]`
    at 16 kHz: the clips the speech models' unit tests fit on."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000.0
    f0, rate = rng.uniform(300, 1500, size=(n, 1)), rng.uniform(-4000, 4000, size=(n, 1))
    return (0.5 * np.sin(2 * np.pi * (f0 * t + 0.5 * rate * t ** 2)) + 0.05 * rng.normal(size=(n, samples))).astype(
        np.float32)


def check_speech_model_serves_its_block(model, clips, block):
    """A `SpeechTransformerModel` (wav2vec 2.0, HuBERT) with `representation_layer=block`
    on 2-block encoders: `frames` and `layer_frames(block)` are that block's output of the
    unmasked clips, both serving signatures give those frames and their L2-normalised mean,
    and the probes read the chosen block first, then the others, then the latents."""
    import numpy as np
    import tensorflow as tf

    from keras_ssl.speech_transformer import speech_features

    frames = speech_features(model.encoder, tf.constant(clips)).layers[block - 1].numpy().astype(np.float64)
    np.testing.assert_allclose(model.frames(clips).numpy(), frames, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.layer_frames(clips, block).numpy(), frames, rtol=1e-5, atol=1e-6)
    pooled = frames.mean(axis=1)
    endpoints = model.serving_endpoints((clips.shape[1],))
    assert [e.name for e in endpoints] == ["serving_default", "embed_waveforms"]
    for endpoint in endpoints:
        out = endpoint.function(tf.constant(clips))
        np.testing.assert_allclose(out["embedding"].numpy(), pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                                   rtol=1e-4, atol=1e-6, err_msg=endpoint.name)
        np.testing.assert_allclose(out["frames"].numpy(), frames, rtol=1e-5, atol=1e-6, err_msg=endpoint.name)
    others = [f"layer{i}" for i in (1, 2) if i != block]
    assert list(model.probe_frames(clips[:2])) == [f"layer{block}", *others, "latent"]
