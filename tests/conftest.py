"""Test set-up: two logical CPU devices (before TF initialises) for the multi-replica tests."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# keras_ssl's caches (the judges of generated samples) go to a directory of this test session,
# not to the user's ~/.keras; subprocesses inherit it
os.environ.setdefault("KERAS_SSL_CACHE", tempfile.mkdtemp(prefix="keras_ssl_cache_"))

import keras_ssl  # noqa: E402,F401  (first, as users do: it turns on TF's oneDNN kernels)
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import tests.toy_methods  # noqa: E402,F401  (test-only methods join the registry in every test process)


@pytest.fixture(scope="session")
def two_cpu_strategy():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, devices
    return tf.distribute.MirroredStrategy(devices)
