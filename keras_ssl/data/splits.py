"""What every split and dataset can do, whatever it holds (images, waveforms).

A split is a dataclass whose fields are arrays over the same N examples (or
None, e.g. no labels); selecting, holding out and taking apply one index to
every field alike. A dataset has `train` and `test` splits and `class_names`.
"""

import dataclasses

import numpy as np


class IndexedExamples:
    """Mixin for split dataclasses: `len`, `select`, `split_off`, `take`."""

    def __len__(self):
        return len(getattr(self, dataclasses.fields(self)[0].name))

    def _pick(self, index):
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: None if v is None else v[index] for k, v in values.items()})

    def select(self, mask):
        """The examples where the boolean `mask` is True."""
        return self._pick(mask)

    def split_off(self, fraction, seed=0):
        """`(rest, held_out)`: a fixed random `fraction` held out (permutation with
        `seed`), order kept."""
        order = np.random.default_rng(seed).permutation(len(self))
        held = np.zeros(len(self), bool)
        held[order[:int(round(len(self) * fraction))]] = True
        return self.select(~held), self.select(held)

    def take(self, n):
        """The first `n` examples (all when `n` is None or larger)."""
        return self if n is None or n >= len(self) else self._pick(slice(0, n))


class LabelledFacts:
    """Mixin for dataset dataclasses (`train`, `class_names`): `num_classes`, `labelled`."""

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def labelled(self):
        return self.train.labels is not None
