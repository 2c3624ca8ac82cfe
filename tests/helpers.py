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
