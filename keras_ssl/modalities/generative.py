"""Serving input kinds of generative endpoints, whatever the modality: `latent`
(float32 vectors to decode) and `seeds` (ints, so that sampling is reproducible
and testable: the same seed gives the same sample)."""

import numpy as np

from keras_ssl.modalities.input_kinds import InputKind, in_order, refuse, register_input_kind

# The seeds and latents a test request holds: fixed, so that two calls agree.
_TEST_SEED = 1234


class Latents(InputKind):
    """`latent`: float32 `[batch, D]` (`D` from `ServingInput.shape`), every value finite;
    the function receives them as they are."""

    name = "latent"

    def check(self, serving_input):
        shape = serving_input.shape
        if not shape or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise ValueError(f"the latent input {serving_input.name!r} needs its shape (every dimension fixed), "
                             f"e.g. ServingInput(name, 'latent', shape=(D,)), got {shape}")

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None, *serving_input.shape], tf.float32, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        import tensorflow as tf

        finite = tf.reduce_all(tf.reshape(tf.math.is_finite(tensor), [tf.shape(tensor)[0], -1]), axis=1)
        with tf.control_dependencies(in_order(lambda: refuse(tf.logical_not(finite), f"{endpoint_name}: latents "
                                                             "hold NaN or Inf", "send finite values"))):
            return tf.identity(tensor)

    def describe(self, input_shape, serving_input):
        return f"float32 [batch, {', '.join(map(str, serving_input.shape))}] latent vectors (finite)"

    def warmup_value(self, input_shape, serving_input):
        return np.zeros([1, *serving_input.shape], np.float32)

    def request_value(self, examples, input_shape, serving_input):
        return np.random.default_rng(_TEST_SEED).normal(size=(len(examples), *serving_input.shape)).astype(np.float32)

    def function_input(self, examples, input_shape, serving_input):
        return self.request_value(examples, input_shape, serving_input)

    def bad_value(self, examples, input_shape, serving_input):
        value = self.request_value(examples[:2], input_shape, serving_input)
        value[1, 0] = np.nan
        return value


class Seeds(InputKind):
    """`seeds`: int64 `[batch]`, each >= 0; the function receives int32 seeds (an endpoint
    draws with stateless random ops seeded by them, so a seed always gives the same
    output)."""

    name = "seeds"

    def spec(self, serving_input, input_shape):
        import tensorflow as tf

        return tf.TensorSpec([None], tf.int64, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        import tensorflow as tf

        checks = in_order(lambda: refuse((tensor < 0) | (tensor > 2 ** 31 - 1), f"{endpoint_name}: seeds must be "
                                         "in [0, 2^31)", "send non-negative 32-bit integers"))
        with tf.control_dependencies(checks):
            return tf.cast(tensor, tf.int32)

    def describe(self, input_shape, serving_input):
        return "int64 [batch] seeds in [0, 2^31): the same seed gives the same output"

    def warmup_value(self, input_shape, serving_input):
        return np.zeros([1], np.int64)

    def request_value(self, examples, input_shape, serving_input):
        return np.arange(len(examples), dtype=np.int64) * 7 + 3

    def function_input(self, examples, input_shape, serving_input):
        return self.request_value(examples, input_shape, serving_input).astype(np.int32)

    def bad_value(self, examples, input_shape, serving_input):
        return np.array([1, -5], np.int64)


register_input_kind(Latents())
register_input_kind(Seeds())
