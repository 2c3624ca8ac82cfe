"""The CPU's matrix-multiply rate in TensorFlow: the ceiling for any training step.

    python benchmarks/cpu_matmul_peak.py

Times square matmuls (n = 2048) in float32 and bfloat16 and prints GFLOP/s
(2 n^3 per matmul). A conv-net training step cannot run faster than this;
docs/BENCHMARKS.md compares the SimCLR step's achieved rate with it.
"""

import time

import keras_ssl  # noqa: F401  (before TensorFlow: the same oneDNN setting as training)
import tensorflow as tf


def rate(dtype, n=2048, reps=20):
    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    f(a).numpy()
    start = time.perf_counter()
    for _ in range(reps):
        f(a).numpy()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    from keras_ssl.precision import cpu_summary

    print(f"cpu={cpu_summary()}")
    for dtype in (tf.float32, tf.bfloat16):
        print(f"matmul_gflops_{dtype.name}={rate(dtype):.1f}")
