"""A faster BatchNormalization for training on CPU, and the conversion back to Keras's own.

Keras 3's `BatchNormalization` computes the batch moments and the
normalisation as separate element-wise TensorFlow ops (about ten passes over
the activations forward and backward). TensorFlow has one fused kernel for
the same computation, `FusedBatchNormV3`, with its own fused gradient, and
with oneDNN on (see `keras_ssl/__init__.py`) it runs as a single oneDNN
batch-norm primitive. Measured on a 2-core AMD EPYC (AVX2 only), SimCLR
training step, oneDNN on: small CNN at 28 px 407 -> 528 images/s, ResNet-18
at 32 px 20.5 -> 26.1 images/s (docs/BENCHMARKS.md).

`FusedBatchNormalization` is a drop-in subclass: same arguments, weights,
`get_config` and inference path; only the training-mode forward pass of a
rank-2 or rank-4, channels-last input goes through the fused kernel. The
moving statistics are updated exactly as Keras does (the batch variance with
the 1/n normaliser; the fused kernel returns the n/(n-1) corrected one, which
is undone). Synchronised BN across replicas, masks, renorm and other axes use
Keras's own code.

Files meant for users without keras_ssl (`encoder.keras`) hold Keras's own
layer: `with_keras_batch_norm(model)` swaps the layers back, weights included.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_ssl")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step uses TensorFlow's fused kernel.

    Training mode, per channel c over the n = batch x height x width values:
        mean_c = sum(x) / n,   var_c = sum((x - mean_c)^2) / n
        y = gamma_c * (x - mean_c) / sqrt(var_c + epsilon) + beta_c
        moving_mean <- momentum * moving_mean + (1 - momentum) * mean_c  (and var)
    which is Keras's definition; inference mode is Keras's code unchanged.
    """

    def _fusable(self, inputs, training, mask):
        rank = len(inputs.shape)
        return (bool(training) and self.trainable and mask is None and not self.renorm
                and not self.synchronized and rank in (2, 4) and self.axis in (-1, rank - 1)
                and inputs.dtype in (tf.float16, tf.bfloat16, tf.float32)  # float64 stays Keras's
                and keras.backend.backend() == "tensorflow")

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = tf.cast(inputs, tf.float32)  # as Keras: statistics in float32 whatever the policy
        if len(inputs.shape) == 2:
            x = tf.reshape(x, [-1, 1, 1, channels])
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        empty = tf.constant([], tf.float32)
        y, mean, corrected_var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        n = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
        variance = corrected_var * tf.maximum(n - 1.0, 0.0) / tf.maximum(n, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        if len(inputs.shape) == 2:
            y = tf.reshape(y, tf.shape(inputs))
        return tf.cast(y, self.compute_dtype)


def _has_fused_batch_norm(model):
    return any(isinstance(layer, FusedBatchNormalization)
               or (isinstance(layer, keras.Model) and _has_fused_batch_norm(layer)) for layer in model.layers)


def with_keras_batch_norm(model):
    """A copy of functional/Sequential `model` with every `FusedBatchNormalization`
    replaced by Keras's own `BatchNormalization` (same config and weights), so
    the saved file loads with plain Keras; `model` itself when it has none."""
    if not _has_fused_batch_norm(model):
        return model

    def clone(layer):
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        if isinstance(layer, keras.Model):
            return with_keras_batch_norm(layer)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
