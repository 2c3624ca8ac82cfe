"""Audio backbones and features: raw 16 kHz waveforms in, a sequence of frames out.

* `cpc_conv`: CPC's strided 1-D convolutional encoder (van den Oord et al.
  2018, section 3.1): five layers with strides 5, 4, 2, 2, 2 and kernels
  10, 8, 4, 4, 4, so one latent `z_t` per 160 samples (10 ms at 16 kHz);
  512 channels in the paper (`width`), with a per-frame LayerNormalization
  after each convolution (Facebook's CPC_audio).
* `cpc_conv_plain`: the same without the LayerNormalizations: Conv1D + ReLU,
  as the paper published it.
* `log_mel_conv`: the audio VQ-VAE's encoder: the normalised log-mel
  spectrogram (`keras_ssl.griffin_lim.log_mel`: the MFCC framing, 80 bands)
  through 1-D convolutions over its frames, one stride-2 convolution halving
  the frame rate (a vector per 20 ms) and two residual blocks;
  `log_mel_conv_10ms` keeps the frame rate (a vector per 10 ms).
* `mfcc`: the classic hand-made features, the baseline the learnt ones must beat.

Like the image encoders, `cpc_conv` is a functional `keras.Model` of Keras's
own layers only (its `.keras` file loads without keras_ssl) with layers named
`block1` .. `block5`; the output `features` is `[batch, frames, width]`,
`frames = ceil(samples / 160)`.
"""

import keras
import tensorflow as tf

from keras_ssl.data.audio import SAMPLE_RATE

CPC_STRIDES = (5, 4, 2, 2, 2)
CPC_KERNELS = (10, 8, 4, 4, 4)
DOWNSAMPLING = 160  # product of the strides: samples per frame


def cpc_conv(width=512, normalize=True, name="cpc_conv"):
    """CPC's waveform encoder: float32 `[batch, samples]` in [-1, 1] ->
    `[batch, ceil(samples / 160), width]`.

    Each clip is first standardised (zero mean, unit variance over its
    samples: the level of a recording carries no meaning), then five
    Conv1D (`padding="same"`) -> LayerNormalization over channels -> ReLU
    blocks. The paper uses ReLU and no normalisation; the per-frame channel
    normalisation is that of Facebook's CPC_audio reimplementation
    (Riviere et al. 2020), which trains more stably; unlike batch norm it
    lets no information pass between the sequences of a batch, which would
    help the contrastive task without helping the representation.
    `normalize=False` drops it (`cpc_conv_plain`, the paper's blocks).
    """
    inputs = keras.Input(shape=(None,), name="waveform")
    x = keras.layers.Reshape((-1, 1), name="to_channels")(inputs)
    x = keras.layers.LayerNormalization(axis=[1, 2], center=False, scale=False, epsilon=1e-5,
                                        name="standardize")(x)
    for i, (kernel, stride) in enumerate(zip(CPC_KERNELS, CPC_STRIDES), start=1):
        x = keras.layers.Conv1D(int(width), kernel, strides=stride, padding="same", name=f"conv{i}")(x)
        if normalize:
            x = keras.layers.LayerNormalization(epsilon=1e-5, name=f"norm{i}")(x)
        x = keras.layers.ReLU(name=f"block{i}")(x)
    outputs = keras.layers.Identity(name="features")(x)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="keras_ssl")
class LogMelSpectrogram(keras.layers.Layer):
    """Waveforms float32 `[batch, samples]` -> the normalised log-mel spectrogram
    `[batch, frames, 80]` of `keras_ssl.griffin_lim.log_mel`, computed in float32."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, waveforms):
        from keras_ssl.griffin_lim import log_mel

        return log_mel(tf.cast(waveforms, tf.float32))

    def compute_output_shape(self, input_shape):
        from keras_ssl.griffin_lim import MEL_BANDS, num_mel_frames

        samples = input_shape[1]
        return (input_shape[0], None if samples is None else num_mel_frames(samples), MEL_BANDS)


def log_mel_conv(width=128, downsampling=2, name="log_mel_conv"):
    """The audio VQ-VAE's encoder: waveforms float32 `[batch, samples]` -> `[batch,
    ceil(frames / downsampling), width]`, `frames` the log-mel frames (10 ms each).

    The log-mel spectrogram (`LogMelSpectrogram`), then the image VQ-VAE's encoder in
    1-D (van den Oord et al. 2017, sec. 4.1: strided convolutions, then two residual
    blocks): a kernel-3 convolution, one kernel-4 stride-2 convolution per halving of
    the frame rate (`downsampling` 1, 2 or 4; ReLU after each), and the residual stack
    of `keras_ssl.models.vqvae.residual_stack`, at `width` channels. The stage ends
    are named `block1` (the frame-rate features), `block2` .. (each halving) and the
    output `features`."""
    from keras_ssl.models.vqvae import residual_stack

    if downsampling not in (1, 2, 4):
        raise ValueError(f"downsampling must be 1, 2 or 4, got {downsampling}")
    inputs = keras.Input(shape=(None,), name="waveform")
    x = LogMelSpectrogram(name="log_mel")(inputs)
    x = keras.layers.Conv1D(int(width), 3, padding="same", activation="relu", name="block1")(x)
    for i in range(1, downsampling.bit_length()):
        x = keras.layers.Conv1D(int(width), 4, strides=2, padding="same", activation="relu", name=f"block{i + 1}")(x)
    x = residual_stack(x, int(width), keras.layers.Conv1D, name="trunk_")
    outputs = keras.layers.Identity(name="features")(x)
    return keras.Model(inputs, outputs, name=name)


def build_audio_encoder(name, width_multiplier=1.0):
    """An audio encoder by name, 512 x `width_multiplier` channels: `cpc_conv`
    (per-frame LayerNormalization, CPC_audio), `cpc_conv_plain` (none, the
    paper's encoder; on a 2-core AVX2 CPU it trains 1.2x as many clips/s, and
    after 20 epochs on the synthetic spoken digits it probes the same,
    see docs/BENCHMARKS.md), `log_mel_conv` (log-mel frames, a vector per
    20 ms: the audio VQ-VAE's) or `log_mel_conv_10ms` (a vector per 10 ms)."""
    width = max(1, int(round(512 * width_multiplier)))
    if name == "cpc_conv":
        return cpc_conv(width)
    if name == "cpc_conv_plain":
        return cpc_conv(width, normalize=False, name="cpc_conv_plain")
    if name == "log_mel_conv":
        return log_mel_conv(width)
    if name == "log_mel_conv_10ms":
        return log_mel_conv(width, downsampling=1, name="log_mel_conv_10ms")
    from keras_ssl.errors import UserError

    raise UserError(f"unknown audio encoder {name!r}; choose cpc_conv or cpc_conv_plain (raw waveform) or "
                    "log_mel_conv or log_mel_conv_10ms (log-mel frames)")


def num_frames(num_samples):
    """Frames `cpc_conv` makes of `num_samples` samples."""
    frames = int(num_samples)
    for stride in CPC_STRIDES:
        frames = -(-frames // stride)
    return frames


# MFCC settings: 25 ms windows every 10 ms, 40 mel bands 20 Hz - 8 kHz, 13 coefficients:
# the usual speech front end (e.g. Kaldi's and the Speech Commands baselines').
MFCC_FRAME, MFCC_HOP, MFCC_BANDS, MFCC_COEFFICIENTS = 400, 160, 40, 13


def mfcc(waveforms):
    """MFCCs with `tf.signal`: float32 `[batch, samples]` -> `[batch, frames, 13]`."""
    waveforms = tf.cast(waveforms, tf.float32)
    spectrum = tf.abs(tf.signal.stft(waveforms, MFCC_FRAME, MFCC_HOP, fft_length=512))
    mel = tf.signal.linear_to_mel_weight_matrix(MFCC_BANDS, spectrum.shape[-1], SAMPLE_RATE, 20.0, SAMPLE_RATE / 2)
    log_mel = tf.math.log(tf.tensordot(spectrum, mel, 1) + 1e-6)
    return tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[..., :MFCC_COEFFICIENTS]

