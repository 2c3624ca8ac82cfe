"""Test set-up: two logical CPU devices (before TF initialises) for the multi-replica tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
