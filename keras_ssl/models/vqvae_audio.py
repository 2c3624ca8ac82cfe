"""The audio VQ-VAE (van den Oord, Vinyals, Kavukcuoglu 2017, sec. 4.3, on speech): a
sequence of discrete codes, one per 20 ms (or 10 ms), from which a decoder gives back the clip's
log-mel spectrogram, and Griffin-Lim a waveform.

Why log-mel, not the waveform the paper models: a decoder of waveforms needs the
paper's autoregressive WaveNet decoder (days of GPU training, and a sample-by-sample
decode); a decoder of log-mel frames needs no phase, is a few 1-D convolutions that
train on 2 CPU cores in minutes, and the waveform comes back by Griffin-Lim
(`keras_ssl.griffin_lim`, in TensorFlow ops, so the SavedModel's `decode` and
`reconstruct` return audio).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.griffin_lim import GRIFFIN_LIM_ITERATIONS, MEL_BANDS, log_mel, num_mel_frames, waveform_from_log_mel
from keras_ssl.models.codebook import Codebook, CodebookOptions
from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.models.vqvae import residual_stack


@dataclasses.dataclass
class VQVAEAudioOptions(CodebookOptions):
    """The audio VQ-VAE's hyper-parameters. Sources: K = 512 codes, the paper's speech
    model (sec. 4.3); D = 64, Sonnet's VQ-VAE example's; beta = 0.25, EMA and restarts
    off (`CodebookOptions`, the paper's); a decoder of 128 channels (the paper's image
    decoder: 256; halved for a CPU); 32 Griffin-Lim iterations with momentum 0.99,
    librosa's defaults (`keras_ssl.griffin_lim`)."""

    codebook_size: int = option(512, "codes in the codebook, K (the paper's speech model: 512)",
                                check=lambda v: v >= 2, requirement=">= 2")
    code_dim: int = option(64, "dimensions of a code vector, D (Sonnet's example: 64)", check=lambda v: v >= 1,
                           requirement=">= 1")
    decoder_hidden_dim: int = option(128, "decoder channels (the paper's image decoder: 256)",
                                     check=lambda v: v >= 1, requirement=">= 1")
    griffin_lim_iterations: int = option(GRIFFIN_LIM_ITERATIONS, "Griffin-Lim iterations when decoding to audio "
                                         "(librosa's default: 32)", check=lambda v: v >= 0, requirement=">= 0")


def audio_decoder(code_frames, code_dim, mel_frames, bands=MEL_BANDS, hidden_dim=VQVAEAudioOptions.decoder_hidden_dim,
                  name="decoder"):
    """The image VQ-VAE's decoder in 1-D: quantised vectors `[B, code_frames, code_dim]`
    -> the residual stack (`residual_stack`, `hidden_dim` channels) -> one kernel-4
    stride-2 Conv1DTranspose per doubling of the frame rate (ReLU between), the last
    giving the `bands` normalised log-mel values per frame in float32 -> cut at the end
    to `mel_frames` (49 codes of a 1 s clip give 98 frames, its log-mel's)."""
    levels = 0
    while (code_frames << levels) < mel_frames:
        levels += 1
    codes = keras.Input((code_frames, int(code_dim)), name="quantized")
    x = residual_stack(codes, hidden_dim, keras.layers.Conv1D)
    for i in range(1, levels):
        x = keras.layers.Conv1DTranspose(hidden_dim, 4, strides=2, padding="same", activation="relu",
                                         name=f"up{i}")(x)
    if levels:
        x = keras.layers.Conv1DTranspose(bands, 4, strides=2, padding="same", dtype="float32", name="log_mel")(x)
    else:
        x = keras.layers.Conv1D(bands, 3, padding="same", dtype="float32", name="log_mel")(x)
    x = keras.layers.Cropping1D((0, (code_frames << levels) - mel_frames), dtype="float32", name="crop")(x)
    return keras.Model(codes, x, name=name)


@keras.saving.register_keras_serializable(package="keras_ssl")
class VQVAEAudio(Codebook, MethodModel):
    """VQ-VAE (van den Oord et al. 2017) on the log-mel spectrogram of 16 kHz clips.

    The run's `encoder` (`keras_ssl.audio_encoders.log_mel_conv`: the normalised
    log-mel, 25 ms windows every 10 ms, 80 bands, through 1-D convolutions halving
    the frame rate: a vector per 20 ms; `log_mel_conv_10ms`: per 10 ms), `pre_quantizer` (a kernel-1 convolution)
    to `z_e` of `code_dim`, each vector replaced by its nearest code of the codebook
    (`keras_ssl.models.codebook.Codebook`, the image VQ-VAE's: straight-through
    gradient, EMA updates, dead-code restarts, code usage, replica handling), the
    `decoder` (`audio_decoder`) back to the normalised log-mel `x` of the clip
    (`keras_ssl.griffin_lim.log_mel`, the target). The loss (the paper's eq. 3 with
    a Gaussian of unit variance per normalised log-mel value, i.e. the squared error
    up to a factor 1/2 and a constant, as Tacotron 2's mel loss):

        loss = mean_{t,f} (x^ - x)^2 + mean((e - sg[z_e])^2) + beta * mean((z_e - sg[e])^2)

    the squared error a mean over the clip's frames and bands, the codebook and
    commitment terms means over every element of the global batch's code sequences
    (the image VQ-VAE's weighting). Under R replicas each replica returns
    `sum(its clips' errors) / B_global + (B_local / B_global) * (its codebook and
    commitment means)`, so that loss and gradients equal one device on the global
    batch. With `codebook_ema` the codebook loss leaves the loss (it is reported).

    `fit()` takes waveform batches `x` (float `[B, samples]` in [-1, 1], 16 kHz),
    or `(x, labels)` (the labels are unused). Metrics: `loss`, `reconstruction`
    (the log-mel squared error), `codebook_loss`, `commitment_loss`, `perplexity`
    and `codes_used` (of the global batch's codes). The representation (`predict`,
    `serving_default`) is the quantised sequence mean-pooled over time;
    `probe_frames` gives the quantised vectors and `z_e` per code frame. The export
    serves `encode` (WAV -> int32 codes `[T']`), `decode` (codes as `tokens` ->
    float32 waveform and log-mel) and `reconstruct` (WAV -> waveform and log-mel);
    waveforms by `griffin_lim_iterations` of Griffin-Lim (`keras_ssl.griffin_lim`).
    `num_samples`: the clip length the model is trained and served at.
    """

    MODALITY = "audio"  # waveform batches [batch, samples]: checked by keras_ssl.modalities.audio
    SUB_MODELS = ("encoder", "pre_quantizer", "decoder")
    TRACKED = ("loss", "reconstruction") + Codebook.CODEBOOK_TRACKED

    def __init__(self, encoder, pre_quantizer=None, decoder=None, num_samples=16000,
                 codebook_size=VQVAEAudioOptions.codebook_size, code_dim=VQVAEAudioOptions.code_dim,
                 commitment_cost=VQVAEAudioOptions.commitment_cost,
                 decoder_hidden_dim=VQVAEAudioOptions.decoder_hidden_dim,
                 codebook_ema=VQVAEAudioOptions.codebook_ema, codebook_ema_decay=VQVAEAudioOptions.codebook_ema_decay,
                 dead_code_steps=VQVAEAudioOptions.dead_code_steps,
                 griffin_lim_iterations=VQVAEAudioOptions.griffin_lim_iterations, seed=0, **kwargs):
        super().__init__(**kwargs)
        from keras_ssl.audio_encoders import MFCC_FRAME

        for name, value, ok, requirement in (
                ("decoder_hidden_dim", decoder_hidden_dim, decoder_hidden_dim >= 1, ">= 1"),
                ("griffin_lim_iterations", griffin_lim_iterations, griffin_lim_iterations >= 0, ">= 0"),
                ("num_samples", num_samples, num_samples >= MFCC_FRAME, f">= {MFCC_FRAME} (one 25 ms frame)")):
            if not ok:
                raise UserError(f"{name} must be {requirement}, got {value!r}")
        self.init_codebook(codebook_size, code_dim, commitment_cost, codebook_ema, codebook_ema_decay,
                           dead_code_steps, seed)
        self.encoder = encoder
        self.num_samples, self.decoder_hidden_dim = int(num_samples), int(decoder_hidden_dim)
        self.griffin_lim_iterations = int(griffin_lim_iterations)
        self.mel_frames = num_mel_frames(self.num_samples)
        features = encoder(tf.zeros([1, self.num_samples]))
        if features.shape.rank != 3:
            raise UserError(f"VQVAEAudio needs an encoder of frames [batch, frames, channels], got {features.shape}")
        self.code_frames = int(features.shape[1])
        self.pre_quantizer = pre_quantizer if pre_quantizer is not None else keras.Sequential(
            [keras.Input((None, int(features.shape[-1]))), keras.layers.Conv1D(self.code_dim, 1, name="to_code")],
            name="pre_quantizer")
        self.decoder = decoder if decoder is not None else audio_decoder(
            self.code_frames, self.code_dim, self.mel_frames, MEL_BANDS, self.decoder_hidden_dim)
        self.build_codebook()
        self.build()

    def checked_inputs(self, x):
        """`x` as float32 `[batch, samples]` if `check_batch` accepts it."""
        return tf.cast(super().checked_inputs(x), tf.float32)

    # -- the parts ------------------------------------------------------------

    def encode_frames(self, waveforms, training=False):
        """`z_e`: float32 `[B, code_frames, code_dim]` of (checked) waveforms."""
        return tf.cast(self.pre_quantizer(self.encoder(waveforms, training=training), training=training), tf.float32)

    def encode_codes(self, waveforms):
        """The codes of waveforms: int32 `[B, code_frames]`."""
        return self.quantize_vectors(self.encode_frames(self.checked_inputs(waveforms)))[1]

    def code_sequence(self, codes):
        """int32 `[B, code_frames]` of codes; codes given eagerly are checked here (shape,
        integers, in [0, K)); the export's `tokens` input checks its own."""
        t, k = self.code_frames, self.codebook_size
        if tf.executing_eagerly():
            values = np.asarray(codes)
            if values.ndim != 2 or values.shape[1] != t:
                raise UserError(f"codes must be [batch, {t}], got shape {values.shape}")
            if values.dtype.kind not in "iu":
                raise UserError(f"codes must be integers, got {values.dtype}")
            if values.size and (values.min() < 0 or values.max() >= k):
                raise UserError(f"codes must be in [0, {k}), got values from {values.min()} to {values.max()}")
        return tf.reshape(tf.cast(codes, tf.int32), [-1, t])

    def log_mel_of(self, quantized, training=False):
        """The decoder's normalised log-mel: float32 `[B, mel_frames, 80]`."""
        return tf.cast(self.decoder(quantized, training=training), tf.float32)

    def decode_log_mel(self, codes):
        """The normalised log-mel spectrogram of codes `[B, code_frames]`."""
        return self.log_mel_of(self.lookup_codes(self.code_sequence(codes)))

    def to_waveforms(self, normalised_log_mel):
        """Float32 waveforms `[B, num_samples]` of normalised log-mel spectrograms, by
        Griffin-Lim (`keras_ssl.griffin_lim.waveform_from_log_mel`)."""
        return waveform_from_log_mel(normalised_log_mel, self.num_samples, self.griffin_lim_iterations)

    def reconstruct_log_mel(self, waveforms):
        """`decode_log_mel(encode_codes(waveforms))`."""
        return self.decode_log_mel(self.encode_codes(waveforms))

    def reconstruct(self, waveforms):
        """The clips through their codes and back, as float32 waveforms `[B, num_samples]`."""
        return self.to_waveforms(self.reconstruct_log_mel(waveforms))

    def target_log_mel(self, waveforms):
        """What the decoder learns to give: the normalised log-mel of the (checked) clips."""
        return log_mel(waveforms)

    def representation(self, waveforms, training=False):
        """The quantised sequence mean-pooled over time: float32 `[B, code_dim]`."""
        codes = self.quantize_vectors(self.encode_frames(waveforms, training))[1]
        return tf.reduce_mean(self.lookup_codes(codes), axis=1)

    def representation_dim(self, input_shape=None):
        return self.code_dim

    def probe_frames(self, waveforms):
        """What frozen-feature probes pool over time (`keras_ssl.evaluation.audio`), from
        one pass of the encoder: `{"quantized": the code vectors (their mean is the
        representation), "latent": z_e}`, each `[B, code_frames, code_dim]`."""
        z = self.encode_frames(self.checked_inputs(waveforms))
        return {"quantized": self.lookup_codes(self.quantize_vectors(z)[1]), "latent": z}

    # -- the step ---------------------------------------------------------------

    def method_loss(self, data, training):
        x, _ = split_data(data)  # word labels, when a pipeline gives them, are not used
        if isinstance(x, (tuple, list)):
            raise UserError("VQVAEAudio expects waveform batches x (or (x, labels))")
        x = self.checked_inputs(x)
        z = self.encode_frames(x, training)
        quantized, codes, codebook_loss, commitment_loss = self.quantize_vectors(z)
        error = tf.reduce_mean(tf.square(self.log_mel_of(quantized, training) - self.target_log_mel(x)), axis=[1, 2])
        n_local = tf.shape(x)[0]
        n_global = tf.cast(global_batch_size(n_local), tf.float32)
        weight = tf.cast(n_local, tf.float32)
        quantisation = self.codebook_step(z, codes, codebook_loss, commitment_loss, weight, training)
        loss = tf.reduce_sum(error) / n_global + (weight / n_global) * quantisation
        for name, value in (("loss", tf.reduce_mean(error) + quantisation), ("reconstruction", tf.reduce_mean(error))):
            self.trackers[name].update_state(value, sample_weight=weight)
        return loss

    # -- what it serves -----------------------------------------------------------

    def serving_endpoints(self, input_shape=None, threshold=None):
        """The audio embedding signatures (`serving_default`: WAV bytes, `embed_waveforms`:
        samples -> the quantised sequence mean-pooled, L2-normalised), `encode` (WAV ->
        `codes` int32 `[code_frames]`), `decode` (`codes` as `tokens` -> float32
        `waveform` `[num_samples]` by Griffin-Lim and its normalised `log_mel`) and
        `reconstruct` (WAV -> `waveform`, `log_mel`). A decoded clip is a float32 waveform,
        not WAV bytes: `tf.audio.encode_wav` of it is one call for a client, and bytes
        would hide the float rounding of Griffin-Lim's FFTs behind a 16-bit one."""
        samples = int(input_shape[0]) if input_shape else self.num_samples
        if samples != self.num_samples:
            raise UserError(f"VQVAEAudio decodes clips of {self.num_samples} samples (its decoder's frames), not "
                            f"{samples}")
        t, k = self.code_frames, self.codebook_size
        codes = ServingOutput("codes", "int32", (t,), f"the nearest of the {k} codes of each of the encoder's {t} "
                              "frames (log_mel_conv: 20 ms each)")
        audio = (ServingOutput("waveform", "float32", (samples,), f"16 kHz samples by {self.griffin_lim_iterations} "
                                                                   "Griffin-Lim iterations from the decoded log-mel"),
                 ServingOutput("log_mel", "float32", (self.mel_frames, MEL_BANDS),
                               "the decoded log-mel spectrogram, normalised: (log(max(mel, 1e-3)) + 2) / 2.5"))

        def decoded(log_mels):
            return {"waveform": self.to_waveforms(log_mels), "log_mel": log_mels}

        return super().serving_endpoints(input_shape, threshold) + [
            Endpoint("encode", (ServingInput("audio", "wav"),), (codes,), lambda x: {"codes": self.encode_codes(x)}),
            Endpoint("decode", (ServingInput("codes", "tokens", shape=(t,), vocabulary_size=k),), audio,
                     lambda c: decoded(self.decode_log_mel(c))),
            Endpoint("reconstruct", (ServingInput("audio", "wav"),), audio,
                     lambda x: decoded(self.reconstruct_log_mel(x))),
        ]


def _build(run, options, encoder, dataset, stage=None):
    return VQVAEAudio(encoder, num_samples=dataset.num_samples, seed=run.seed,
                      **option_arguments(options, VQVAEAudio))


def _training_data(run, options, split, stage=None):
    from keras_ssl.data.sequences import waveform_batches

    return TrainingData(waveform_batches(split, run.batch_size, seed=run.seed), epoch_steps(split, run.batch_size),
                        run.batch_size)


def _register_evaluations():
    from keras_ssl.evaluation.audio_codes import EVALUATIONS
    from keras_ssl.evaluation.method_evaluations import register_evaluation

    for declared in EVALUATIONS:
        register_evaluation(declared)


_register_evaluations()
register(Method(
    name="vqvae_audio", summary="VQ-VAE on log-mel frames of 16 kHz audio, Griffin-Lim back to audio (van den Oord "
                                "et al. 2017)",
    options=VQVAEAudioOptions, build=_build, training_data=_training_data, modality="audio",
    # Adam at 1e-3 (the keras.io VQ-VAE example's; the paper's 2e-4 is for far longer runs), batch 32 (CPC's
    # here), the log-mel encoder
    run_defaults=dict(model_dir="runs/vqvae_audio", dataset="folder:data/spoken_digits", encoder="log_mel_conv",
                      optimizer="adam", learning_rate=1e-3, lr_scaling="none", warmup_epochs=0.0, weight_decay=0.0,
                      batch_size=32),
    evaluations=("probe", "audio_codebook", "intelligibility"),
    smoke_options=dict(batch_size=8, audio_seconds=0.25, width_multiplier=1 / 16, codebook_size=16, code_dim=8,
                       decoder_hidden_dim=16, griffin_lim_iterations=4),
))
