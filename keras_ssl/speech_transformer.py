"""The speech Transformer of wav2vec 2.0 (Baevski et al. 2020) and HuBERT (Hsu et al. 2021):
raw 16 kHz audio -> a convolutional feature encoder (a latent per 20 ms) -> a Transformer
context network with a convolutional relative position embedding. Both methods build it
with `speech_transformer(...)` and run it with `speech_features(...)`, which can replace
masked frames by the learned mask embedding; it is no `--encoder` choice (each method
builds its own from its options).

    encoder = speech_transformer(conv_width=256, width=256, layers=4, heads=4)
    encoder(waveforms)                              # [B, T, D]: the context, T = feature_frames(samples)
    out = speech_features(encoder, waveforms, masked=mask, training=True)
    out.features, out.latents, out.layers           # conv output, its LayerNorm, every block's output

The parts, as layers of one functional Keras model (their names):

* `feature_encoder`, a nested model: the clip standardised (zero mean, unit variance,
  as fairseq's `normalize=True` of the LARGE models and `keras_ssl.audio_encoders.cpc_conv`),
  then seven bias-free Conv1D (`padding="valid"`) with kernels 10, 3, 3, 3, 3, 2, 2 and
  strides 5, 2, 2, 2, 2, 2, 2 (the paper's section 4.2: 320 samples = 20 ms per frame, a
  receptive field of 400 samples = 25 ms; 49 frames for 1 s), each followed by GELU, the
  first with a GroupNormalization of one group per channel (fairseq's `extractor_mode
  "default"`, the BASE model's); the paper's 512 channels (`conv_width`);
* `feature_norm`: LayerNormalization of the conv output: the latents `z_t` (the
  quantiser's input in wav2vec 2.0);
* `projection`: Dense to the Transformer width (fairseq's `post_extract_proj`), then
  `input_dropout`;
* `mask_embedding` (`MaskEmbedding`): a learned vector that replaces the masked frames
  (identity when no mask is given, as in the model's own graph);
* `positions` (`ConvPositionalEmbedding`): `x + GELU(conv(x))`, a grouped convolution
  over time (kernel 128, 16 groups: the paper's section 4.2, after Mohamed et al. 2019),
  the relative position embedding; then `context_dropout`;
* `block1` .. `blockL`: pre-LN Transformer blocks (`keras_ssl.text_encoders.TransformerBlock`:
  x + MHA(LN(x)), x + MLP(LN(x)), MLP 4 x width with GELU, dropout on the attention
  weights and the residual branches), then `sequence`, a final LayerNorm. Pre-LN with a
  final LayerNorm is the LARGE models' `layer_norm_first`; BASE is post-LN. Pre-LN trains
  without a warmup-critical LayerNorm placement (Xiong et al. 2020), which matters for
  short CPU runs.

Left out of fairseq's: the weight normalisation of the position convolution (its weights
are initialised as fairseq's, N(0, sqrt(4 / (kernel * width)))), LayerDrop, and padding
masks (clips are cut or padded to one length, as every audio method here). Keras's
`padding="same"` for the even kernel 128 looks 63 frames back and 64 ahead (fairseq: 64
and 63).

Sizes (`SPEECH_*`, ours for 2 CPU cores): conv width 128, 4 blocks of width 256 with 4
heads, dropout 0.1 (BASE: 512; 12 blocks of 768, 12 heads, dropout 0.1). The feature
encoder's cost grows with the square of its width and dominates a training step: on a
2-core Xeon (AMX, shared with other jobs) wav2vec 2.0 trained 40 clips/s at 128 channels,
19 at 256; `conv_norm="layer"` (LayerNorm after every convolution) trained 13 clips/s.
"""

import math
import typing

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.text_encoders import TransformerBlock

FEATURE_KERNELS = (10, 3, 3, 3, 3, 2, 2)
FEATURE_STRIDES = (5, 2, 2, 2, 2, 2, 2)
FRAME_SAMPLES = 320  # product of the strides: 20 ms at 16 kHz
RECEPTIVE_FIELD = 400  # samples the first frame needs: 25 ms
POSITION_KERNEL, POSITION_GROUPS = 128, 16  # the paper's section 4.2
CONV_NORMS = ("group", "layer")  # fairseq's extractor_mode "default" (BASE) and "layer_norm" (LARGE)
SPEECH_CONV_WIDTH, SPEECH_LAYERS, SPEECH_WIDTH, SPEECH_HEADS, SPEECH_DROPOUT = 128, 4, 256, 4, 0.1
LAYER_NORM_EPSILON = 1e-5  # fairseq's LayerNorm


def feature_frames(num_samples):
    """Frames the feature encoder makes of `num_samples` samples: `floor((n - k) / s) + 1`
    layer by layer (49 for 16,000; 0 below 400)."""
    if isinstance(num_samples, tf.Tensor):  # a dynamic clip length (an int tensor)
        frames = tf.cast(num_samples, tf.int32)
        for kernel, stride in zip(FEATURE_KERNELS, FEATURE_STRIDES):
            frames = tf.maximum(0, (frames - kernel) // stride + 1)
        return frames
    frames = int(num_samples)
    for kernel, stride in zip(FEATURE_KERNELS, FEATURE_STRIDES):
        frames = max(0, (frames - kernel) // stride + 1)
    return frames


def feature_encoder(width=512, norm="group", name="feature_encoder"):
    """wav2vec 2.0's convolutional feature encoder: float32 `[B, samples]` in [-1, 1] ->
    `[B, feature_frames(samples), width]` (see the module docstring); layers `conv1` ..
    `conv7`, the normalisations `norm<i>`, and `block1` .. `block7` (each block's GELU
    output). `norm` (`CONV_NORMS`): "group", a GroupNormalization of one group per channel
    after the first convolution only (each channel normalised over the clip: fairseq's
    `extractor_mode="default"`, the BASE model's); "layer", a LayerNormalization over the
    channels of every frame after every convolution (fairseq's `"layer_norm"`, the LARGE
    models'; it keeps each channel's level over the clip)."""
    if norm not in CONV_NORMS:
        raise UserError(f"the feature encoder's norm must be one of {', '.join(CONV_NORMS)}, got {norm!r}")
    inputs = keras.Input(shape=(None,), name="waveform")
    x = keras.layers.Reshape((-1, 1), name="to_channels")(inputs)
    x = keras.layers.LayerNormalization(axis=[1, 2], center=False, scale=False, epsilon=1e-5, name="standardize")(x)
    for i, (kernel, stride) in enumerate(zip(FEATURE_KERNELS, FEATURE_STRIDES), start=1):
        x = keras.layers.Conv1D(int(width), kernel, strides=stride, use_bias=False, name=f"conv{i}",
                                kernel_initializer="he_normal")(x)
        if norm == "group" and i == 1:
            x = keras.layers.GroupNormalization(groups=int(width), epsilon=1e-5, name="norm1")(x)
        elif norm == "layer":
            x = keras.layers.LayerNormalization(epsilon=1e-5, name=f"norm{i}")(x)
        x = keras.layers.Activation("gelu", name=f"block{i}")(x)
    return keras.Model(inputs, x, name=name)


@keras.saving.register_keras_serializable(package="keras_ssl")
class MaskEmbedding(keras.layers.Layer):
    """`(x [B, T, D], masked [B, T] bool)` -> x with every masked frame replaced by one
    learned vector (fairseq's `mask_emb`, initialised U(0, 1)); `masked` None: x."""

    def build(self, input_shape):
        self.embedding = self.add_weight(name="mask_embedding", shape=(int(input_shape[-1]),),
                                         initializer=keras.initializers.RandomUniform(0.0, 1.0))
        self.built = True

    def call(self, x, masked=None):
        if masked is None:
            return x
        return tf.where(tf.cast(masked, tf.bool)[..., None], tf.cast(self.embedding, x.dtype)[None, None], x)

    def compute_output_shape(self, x_shape, masked_shape=None):
        return x_shape


@keras.saving.register_keras_serializable(package="keras_ssl")
class ConvPositionalEmbedding(keras.layers.Layer):
    """`x [B, T, D]` -> `x + GELU(conv(x))`: wav2vec 2.0's relative position embedding, a
    convolution over time of `kernel` frames in `groups` groups of D / groups channels
    (`padding="same"`). The grouped convolution is `tf.nn.conv1d` with a `[kernel, D /
    groups, D]` filter (oneDNN runs it on CPU; Keras's `Conv1D(groups=...)` compiles it
    with XLA there, about 200 times slower)."""

    def __init__(self, kernel=POSITION_KERNEL, groups=POSITION_GROUPS, **kwargs):
        super().__init__(**kwargs)
        self.kernel, self.groups = int(kernel), int(groups)

    def build(self, input_shape):
        width = int(input_shape[-1])
        if width % self.groups:
            raise UserError(f"the Transformer width {width} must be a multiple of the {self.groups} position groups")
        std = math.sqrt(4.0 / (self.kernel * width))  # fairseq's make_conv_pos (dropout 0)
        self.filters = self.add_weight(name="kernel", shape=(self.kernel, width // self.groups, width),
                                       initializer=keras.initializers.RandomNormal(stddev=std))
        self.bias = self.add_weight(name="bias", shape=(width,), initializer="zeros")
        self.built = True

    def call(self, x):
        y = tf.nn.conv1d(x, tf.cast(self.filters, x.dtype), 1, "SAME") + tf.cast(self.bias, x.dtype)
        return x + tf.nn.gelu(y, approximate=False)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(kernel=self.kernel, groups=self.groups)
        return config


def speech_transformer(conv_width=SPEECH_CONV_WIDTH, width=SPEECH_WIDTH, layers=SPEECH_LAYERS, heads=SPEECH_HEADS,
                       dropout=SPEECH_DROPOUT, position_kernel=POSITION_KERNEL, position_groups=POSITION_GROUPS,
                       conv_norm="group", name="speech_transformer"):
    """The functional speech Transformer: float32 waveforms `[B, samples]` (16 kHz, in
    [-1, 1], at least 400 samples) -> the context `[B, T, width]` (the output of the final
    LayerNorm `sequence`); the layers are listed in the module docstring."""
    if int(width) % int(heads):
        raise UserError(f"the Transformer width {width} must be a multiple of the {heads} heads")
    waveforms = keras.Input(shape=(None,), name="waveform")
    features = feature_encoder(conv_width, conv_norm)(waveforms)
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="feature_norm")(features)
    x = keras.layers.Dense(int(width), name="projection")(x)
    x = keras.layers.Dropout(float(dropout), name="input_dropout")(x)
    x = MaskEmbedding(name="mask_embedding")(x)
    x = ConvPositionalEmbedding(position_kernel, position_groups, name="positions")(x)
    x = keras.layers.Dropout(float(dropout), name="context_dropout")(x)
    for i in range(int(layers)):
        x = TransformerBlock(int(width), int(heads), dropout=float(dropout), name=f"block{i + 1}")(x)
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="sequence")(x)
    return keras.Model(waveforms, x, name=name)


class SpeechFeatures(typing.NamedTuple):
    """What `speech_features` returns: `features` (the conv output `[B, T, C]`), `latents`
    (its LayerNorm, `z_t`), `layers` (each block's output `[B, T, D]`, the last one after
    the final LayerNorm: `layers[-1]` is the model's output)."""

    features: object
    latents: object
    layers: list


def transformer_blocks(encoder):
    """The encoder's `TransformerBlock` layers, in order."""
    return [layer for layer in encoder.layers if isinstance(layer, TransformerBlock)]


def speech_features(encoder, waveforms, masked=None, training=False):
    """One pass of a `speech_transformer` over float32 waveforms `[B, samples]`, the frames
    where the bool `masked` `[B, T]` is True replaced by the mask embedding after the
    projection (before the position embedding); see `SpeechFeatures`."""
    features = encoder.get_layer("feature_encoder")(waveforms, training=training)
    latents = encoder.get_layer("feature_norm")(features)
    x = encoder.get_layer("input_dropout")(encoder.get_layer("projection")(latents), training=training)
    x = encoder.get_layer("mask_embedding")(x, masked)
    x = encoder.get_layer("context_dropout")(encoder.get_layer("positions")(x), training=training)
    layers = []
    for block in transformer_blocks(encoder):
        x = block(x, training=training)
        layers.append(x)
    layers[-1] = encoder.get_layer("sequence")(x)
    return SpeechFeatures(features, latents, layers)


def feature_encoder_variables(encoder):
    """The trainable variables of the convolutional feature encoder (wav2vec 2.0 scales
    their gradients, fairseq's `feature_grad_mult`)."""
    return list(encoder.get_layer("feature_encoder").trainable_variables)


# -- the options both methods declare (one flag each) --------------------------------------


def scaled_width(width, heads, groups=POSITION_GROUPS, width_multiplier=1.0):
    """`width * width_multiplier` rounded to a multiple of both `heads` and the position
    embedding's `groups` (at least one such multiple)."""
    unit = math.lcm(int(heads), int(groups))
    return max(unit, int(round(int(width) * float(width_multiplier) / unit)) * unit)


def _option(default, help, minimum):
    from keras_ssl.options import option

    return option(default, help, check=lambda v: v >= minimum, requirement=f">= {minimum}")


def conv_width_option():
    return _option(SPEECH_CONV_WIDTH, "channels of the speech feature encoder's convolutions, times "
                   "--width_multiplier (ours, for CPU; wav2vec 2.0: 512)", 1)


def layers_option():
    return _option(SPEECH_LAYERS, "Transformer blocks of the speech context network (ours, for CPU; wav2vec 2.0 "
                   "BASE: 12)", 1)


def width_option():
    return _option(SPEECH_WIDTH, "width of the speech context network, times --width_multiplier, rounded to a "
                   "multiple of the heads and position groups (ours, for CPU; wav2vec 2.0 BASE: 768)", 1)


def heads_option():
    return _option(SPEECH_HEADS, "attention heads of the speech context network (ours; wav2vec 2.0 BASE: 12)", 1)


def conv_norm_option():
    from keras_ssl.options import option

    return option("group", "normalisation in the speech feature encoder: group (one group per channel after the "
                  "first convolution: wav2vec 2.0 BASE) or layer (over the channels after every convolution: LARGE)",
                  choices=CONV_NORMS)


def position_kernel_option():
    return _option(POSITION_KERNEL, "frames of the convolutional relative position embedding (wav2vec 2.0: 128)",
                   1)


def position_groups_option():
    return _option(POSITION_GROUPS, "groups of the convolutional relative position embedding (wav2vec 2.0: 16)",
                   1)


def dropout_option():
    from keras_ssl.options import option

    return option(SPEECH_DROPOUT, "dropout of the speech Transformer's input, attention weights and residual "
                  "branches, and of wav2vec 2.0's quantiser input (wav2vec 2.0 and HuBERT BASE: 0.1 each)",
                  check=lambda v: 0 <= v < 1, requirement="in [0, 1)")
