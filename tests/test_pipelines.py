"""Every input pipeline keras_ssl builds runs without tf.data's autotuning thread, whose wait
held up the end of `fit` by up to the pipeline's age (keras_ssl.data.finish)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ssl.data import eval_batches, simclr_views
from keras_ssl.data.finish import finished, without_autotune_thread
from keras_ssl.data.masking import mlm_batches
from keras_ssl.data.pairs import pair_batches, triplet_batches, user_pairs
from keras_ssl.data.pretext import relative_position_batches, rotation_batches
from keras_ssl.data.sampling import pk_batches
from keras_ssl.data.sequences import waveform_batches
from keras_ssl.data.sources import Split
from keras_ssl.data.views import image_batches

RNG = np.random.default_rng(0)
IMAGES = Split(RNG.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8), np.repeat(np.arange(4), 10).astype(np.int32))


class _Clips:
    waveforms = RNG.normal(size=(12, 800)).astype(np.float32)

    def __len__(self):
        return len(self.waveforms)


BUILDERS = {
    "simclr_views": lambda: simclr_views(IMAGES, 8, augment="fashion_mnist"),
    "eval_batches": lambda: eval_batches(IMAGES, 16),
    "image_batches": lambda: image_batches(IMAGES, 8),
    "pair_batches": lambda: pair_batches(IMAGES, 8),
    "user_pairs": lambda: user_pairs(IMAGES.images[:10], IMAGES.images[10:20], np.ones(10), 4),
    "triplet_batches": lambda: triplet_batches(IMAGES, 8),
    "pk_batches": lambda: pk_batches(IMAGES, 2, 4),
    "rotation_batches": lambda: rotation_batches(IMAGES, 8),
    "relative_position_batches": lambda: relative_position_batches(IMAGES, 8),
    "waveform_batches": lambda: waveform_batches(_Clips(), 4),
    "mlm_batches": lambda: mlm_batches(RNG.integers(4, 40, (12, 16)).astype(np.int32), 4, 40),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_pipeline_builder_turns_the_autotuning_thread_off(name):
    data = BUILDERS[name]()
    assert data.options().autotune.enabled is False, name
    next(iter(data))  # and it still yields a batch


def test_finished_prefetches_and_keeps_the_elements():
    data = tf.data.Dataset.range(10).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    assert tf.data.Dataset.range(3).options().autotune.enabled is None  # tf.data's default: on
    for buffer_size, expected in ((None, tf.data.AUTOTUNE), (2, 2)):
        done = finished(data) if buffer_size is None else finished(data, buffer_size)
        assert [int(x) for x in done] == list(range(0, 20, 2))
        # the stage under the options is a prefetch of the asked size (TF 2.21's dataset classes)
        assert type(done._input_dataset).__name__ == "_PrefetchDataset"
        assert int(done._input_dataset._buffer_size) == expected
    assert without_autotune_thread(data).options().autotune.enabled is False
