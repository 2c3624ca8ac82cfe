"""wav2vec 2.0's product quantiser with the Gumbel softmax (Baevski et al. 2020, section
2; Jang et al. 2017; fairseq's `GumbelVectorQuantizer`).

    quantizer = GumbelVectorQuantizer(groups=2, entries=320, code_dim=256)
    logits = quantizer.logits(latents)                       # [B, T, G, V]
    one_hots = gumbel_softmax(logits, gumbel_noise(tf.shape(logits), seed), temperature=2.0)
    quantized = quantizer.lookup(one_hots)                   # [B, T, code_dim]
    quantizer(latents)                                       # the same without noise: each group's argmax

A latent `z` is mapped by one Dense layer to `G x V` logits `l_{g,v}`; in each group g one
of V codebook entries `e_{g,v}` (each `code_dim / G` wide) is chosen, and the G chosen
entries are concatenated: `q = [e_{1,v_1}, ..., e_{G,v_G}]`, one of `V^G` vectors
(2 x 320 gives 102,400). While training the choice is the Gumbel softmax with the
straight-through estimator (Jang et al. 2017; Bengio et al. 2013):

    p_{g,v} = exp((l_{g,v} + n_v) / tau) / sum_k exp((l_{g,k} + n_k) / tau),   n = -log(-log(u)),  u ~ U(0, 1)

forward: the one-hot of `argmax_v p_{g,v}` (a hard choice); backward: the gradient of
`p` (the soft one), i.e. `one_hot + (p - stop_gradient(p))`. At inference each group takes
the argmax of its logits (no noise). The temperature `tau` is annealed
(`gumbel_temperature`). Initialisation as fairseq's: the logits' Dense kernel N(0, 1),
bias 0; the codebook U(0, 1).

Everything runs in float32 whatever the compute dtype (the softmax of sharp logits at a
low temperature needs it).
"""

import math

import keras
import tensorflow as tf

# Baevski et al. 2020, section 4.2: G = 2 groups of V = 320 entries; tau annealed from 2 to
# 0.5 by a factor 0.999995 per update (BASE, 400k updates)
GROUPS, ENTRIES = 2, 320
TEMPERATURE_START, TEMPERATURE_END, TEMPERATURE_DECAY = 2.0, 0.5, 0.999995
PAPER_UPDATES = 400_000
# The share of its updates after which the paper's schedule reaches the end temperature:
# 2 * 0.999995^n = 0.5 at n = ln 4 / -ln 0.999995 = 277,258 of 400k updates, 69%
PAPER_ANNEALED_SHARE = math.log(TEMPERATURE_START / TEMPERATURE_END) / -math.log(TEMPERATURE_DECAY) / PAPER_UPDATES


def gumbel_noise(shape, seed):
    """Standard Gumbel noise `-log(-log(u))`, u uniform in (0, 1), float32 of `shape`,
    from a stateless seed (int `[2]`): the same seed, the same noise."""
    tiny = 1e-10  # u in [1e-10, 1 - 1e-10]: both logs finite
    u = tf.random.stateless_uniform(shape, tf.cast(seed, tf.int32), minval=tiny, maxval=1.0 - tiny)
    return -tf.math.log(-tf.math.log(u))


def gumbel_softmax(logits, noise, temperature, hard=True):
    """The Gumbel softmax of `logits` `[..., V]` over the last axis, with `noise` of the
    same shape (`gumbel_noise`; zeros for none) at `temperature`: float32
    `softmax((logits + noise) / temperature)`; with `hard` (straight-through) the forward
    value is its one-hot argmax and the gradient is the soft one's."""
    soft = tf.nn.softmax((tf.cast(logits, tf.float32) + tf.cast(noise, tf.float32)) / temperature, axis=-1)
    if not hard:
        return soft
    one_hot = tf.one_hot(tf.argmax(soft, axis=-1, output_type=tf.int32), tf.shape(soft)[-1], dtype=tf.float32)
    return one_hot + (soft - tf.stop_gradient(soft))  # exactly the one-hot forward: soft - soft is 0


def gumbel_temperature(step, total_steps=None, start=TEMPERATURE_START, end=TEMPERATURE_END, decay=None,
                       annealed_share=PAPER_ANNEALED_SHARE):
    """The temperature at optimizer step `step`: `max(end, start * decay^step)` (fairseq's
    `set_num_updates`). `decay` None: chosen so that `end` is reached after
    `annealed_share` of `total_steps` (the paper's 0.999995 reaches 0.5 after 69% of its
    400k updates; a run of a few thousand steps anneals over its own length the same
    way), or the paper's 0.999995 when `total_steps` is unknown. Works on tensors."""
    if decay is None:
        if total_steps:
            decay = math.exp(math.log(end / start) / max(1.0, annealed_share * float(total_steps)))
        else:
            decay = TEMPERATURE_DECAY
    step = tf.cast(step, tf.float32)
    return tf.maximum(float(end), float(start) * tf.exp(step * math.log(float(decay))))


@keras.saving.register_keras_serializable(package="keras_ssl")
class GumbelVectorQuantizer(keras.layers.Layer):
    """Latents `[..., C]` -> quantised vectors `[..., code_dim]`, `groups` x `entries`
    codebook entries of `code_dim // groups` each (see the module docstring). Called as
    a layer it takes each group's argmax (inference); training uses `logits`,
    `gumbel_softmax` and `lookup`. Its weights are float32 and it computes in float32."""

    def __init__(self, groups=GROUPS, entries=ENTRIES, code_dim=256, **kwargs):
        kwargs["dtype"] = "float32"  # the selection and its softmax in float32 whatever the policy
        super().__init__(**kwargs)
        self.groups, self.entries, self.code_dim = int(groups), int(entries), int(code_dim)
        if self.groups < 1 or self.entries < 2:
            raise ValueError(f"a product quantiser needs groups >= 1 and entries >= 2, got {groups}, {entries}")
        if self.code_dim % self.groups:
            raise ValueError(f"code_dim {self.code_dim} must be a multiple of the {self.groups} groups")
        self.projection = keras.layers.Dense(self.groups * self.entries, name="logits", dtype="float32",
                                             kernel_initializer=keras.initializers.RandomNormal(stddev=1.0))

    def build(self, input_shape):
        self.projection.build(tuple(input_shape))
        shape = (self.groups, self.entries, self.code_dim // self.groups)
        self.codebook = self.add_weight(name="codebook", shape=shape,
                                        initializer=keras.initializers.RandomUniform(0.0, 1.0))
        self.built = True

    def logits(self, latents):
        """float32 `[..., G, V]`: each group's logits over its entries."""
        logits = self.projection(tf.cast(latents, tf.float32))
        return tf.reshape(logits, tf.concat([tf.shape(logits)[:-1], [self.groups, self.entries]], 0))

    def lookup(self, one_hots):
        """`[..., G, V]` (one-hot or soft weights) -> `[..., code_dim]`: each group's
        weighted entries, concatenated over the groups."""
        one_hots = tf.cast(one_hots, tf.float32)
        flat = tf.reshape(one_hots, [-1, self.groups, self.entries])  # an einsum with "..." is 100x slower on CPU
        chosen = tf.einsum("ngv,gvd->ngd", flat, tf.cast(self.codebook, tf.float32))
        return tf.reshape(chosen, tf.concat([tf.shape(one_hots)[:-2], [self.code_dim]], 0))

    def codes(self, latents):
        """int32 `[..., G]`: each group's argmax entry (no noise)."""
        return tf.argmax(self.logits(latents), axis=-1, output_type=tf.int32)

    def call(self, latents):
        return self.lookup(tf.one_hot(self.codes(latents), self.entries, dtype=tf.float32))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.code_dim)

    def get_config(self):
        config = super().get_config()
        config.update(groups=self.groups, entries=self.entries, code_dim=self.code_dim)
        return config
