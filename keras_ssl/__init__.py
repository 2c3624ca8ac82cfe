"""keras_ssl: self-supervised and metric representation learning for Keras 3 / TensorFlow.

Importing keras_ssl before TensorFlow turns on TensorFlow's oneDNN kernels
(`TF_ENABLE_ONEDNN_OPTS=1`) unless the variable is already set. TensorFlow
turns them on by itself only on CPUs with AVX512-VNNI/BF16 or AMX; on an
AVX2-only CPU it uses Eigen, and the SimCLR training step was 1.4-1.5x slower
there (2-core AMD EPYC: small CNN 272 -> 407 images/s, ResNet-18 14.5 -> 20.5;
docs/BENCHMARKS.md). TensorFlow reads the variable once, when it is imported:
import keras_ssl first, or export TF_ENABLE_ONEDNN_OPTS=1 yourself; set it to 0
to keep Eigen. `keras_ssl.precision.onednn_enabled()` tells which is in use.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
