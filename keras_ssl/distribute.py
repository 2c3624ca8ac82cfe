"""Distribution strategies by name.

    strategy = keras_ssl.distribute.get_strategy("mirrored")
    with strategy.scope():
        model = SimCLR(build_encoder(...))   # sync BN turns on by itself
        model.compile(optimizer=...)
    model.fit(dataset)                       # dataset batches are GLOBAL batches

`mirrored` uses every GPU; on a machine without GPUs it uses the logical CPU
devices made by `split_cpu(n)` (which must run before TensorFlow initialises
its devices), which is how the multi-replica paths are tested on a laptop.
Keras's `fit` splits each global batch across the replicas.
"""

import tensorflow as tf

from keras_ssl.errors import UserError

STRATEGIES = ("default", "mirrored")


def split_cpu(n):
    """Splits the first CPU into `n` logical devices (before TF initialises)."""
    if n < 1:
        raise UserError(f"number of CPU replicas must be >= 1, got {n}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != n:
            raise UserError(f"cannot split the CPU into {n} devices after TensorFlow has initialised "
                            f"({existing} exist); do it first thing in the program")


def get_strategy(name="default", cpu_replicas=None):
    """A `tf.distribute.Strategy` by name: `default` or `mirrored`.

    `cpu_replicas` (mirrored on CPU only): split the CPU into that many
    logical devices first, for trying multi-replica training without GPUs.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        if cpu_replicas:
            split_cpu(cpu_replicas)
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
