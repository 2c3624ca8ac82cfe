"""Contrastive Predictive Coding (van den Oord, Li, Vinyals 2018) on raw audio.

CPC on images (the paper's section 3.2) is `keras_ssl.models.cpc_image`, what
both share `keras_ssl.models.predictive_coding`; their names are importable
from here too.
"""

import dataclasses

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.models.global_batch import split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.predictive_coding import _PredictiveCoding, step_predictors
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register


def gru_context(input_dim, context_dim=256, name="context"):
    """CPC's autoregressive context network: a GRU over the latents, `c_t` for every t."""
    inputs = keras.Input(shape=(None, int(input_dim)), name="latents")
    outputs = keras.layers.GRU(int(context_dim), return_sequences=True, name="gru")(inputs)
    return keras.Model(inputs, outputs, name=name)


@dataclasses.dataclass
class CPCAudioOptions:
    """CPC on audio. Sources: a GRU context of 256 and K = 12 steps predicted
    (120 ms ahead), the paper's section 3.1; 128 negatives, Facebook's
    CPC_audio (Riviere et al. 2020). The encoder's 512 channels (the paper's)
    are 512 x `--width_multiplier` of `--encoder=cpc_conv`."""

    context_dim: int = option(256, "GRU context size (CPC: 256)", check=lambda v: v >= 1, requirement=">= 1")
    prediction_steps: int = option(12, "future latents predicted, K (CPC: 12, i.e. 120 ms)",
                                   check=lambda v: v >= 1, requirement=">= 1")
    num_negatives: int = option(128, "negatives per prediction, drawn from the global batch (CPC_audio: 128)",
                                check=lambda v: v >= 1, requirement=">= 1")


@keras.saving.register_keras_serializable(package="keras_ssl")
class CPC(_PredictiveCoding):
    """Contrastive Predictive Coding (van den Oord, Li, Vinyals 2018) on raw audio.

    The `encoder` (e.g. `keras_ssl.audio_encoders.cpc_conv`) maps a waveform
    to latents `z_t` (one per 10 ms), the `context` GRU summarises `z_1..z_t`
    into `c_t`, and for every k = 1..K the linear `W_k c_t` predicts `z_{t+k}`
    against `num_negatives` latents drawn from every time step of every
    sequence of the global batch (`keras_ssl.losses.cpc_info_nce_terms`; a
    fresh draw per step and k). The loss is the mean over
    k of the mean InfoNCE over all (sequence, t) of the global batch.

    The representation of a clip (`predict`, `embedding` when served) is the
    mean over time of `c_t`; `frames(waveforms)` gives `c_t` itself.

    `fit()`, `evaluate()` and `predict()` take waveform batches `x` (float
    `[B, samples]` in [-1, 1], 16 kHz); other shapes and integer PCM are
    refused with one `UserError`, and so are targets `y` in `fit()` and
    `evaluate()` (word and speaker labels are for the evaluator's probes).
    Metrics: `loss`, `accuracy` (the
    positive scored highest, mean over k) and `mi_bound`, the InfoNCE lower
    bound on I(z_{t+k}; c_t) in nats, `log(N) - loss` with `N` candidates
    (mean over k). `step_metrics` gives them per k.

    Under R replicas each replica returns `sum(local terms_k) / (K * B_global *
    (T - k))` summed over k, so loss and gradients equal one device on the
    whole batch. Defaults (`CPCAudioOptions`'s): GRU of 256 and K = 12 (the paper's
    section 3.1), 128 negatives (CPC_audio, Riviere et al. 2020).
    `num_samples`: the clip length the model is trained and served at.
    """

    MODALITY = "audio"  # waveform batches [batch, samples]: checked by keras_ssl.modalities.audio

    def __init__(self, encoder, context=None, predictor=None, context_dim=CPCAudioOptions.context_dim,
                 prediction_steps=CPCAudioOptions.prediction_steps, num_negatives=CPCAudioOptions.num_negatives,
                 num_samples=16000, seed=0, **kwargs):
        super().__init__(**kwargs)
        if int(prediction_steps) < 1:
            raise UserError(f"prediction_steps must be >= 1, got {prediction_steps}")
        self.encoder = encoder
        self.latent_dim = int(encoder.output_shape[-1])
        self.context_dim = int(context_dim)
        self.prediction_steps = int(prediction_steps)
        if int(num_negatives) < 1:
            raise UserError(f"num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = int(num_negatives)
        self.seed = int(seed)
        self.num_samples = int(num_samples)
        self.context = context if context is not None else gru_context(self.latent_dim, self.context_dim)
        self.predictor = predictor if predictor is not None else step_predictors(
            self.context_dim, self.latent_dim, self.prediction_steps)
        self.build()

    def _waveforms(self, data):
        x, y = split_data(data)
        if y is not None:
            raise UserError("CPC learns from the waveforms alone and has no use for targets y (word or speaker "
                            "labels are for keras-ssl-evaluate's probes); fit on x only, e.g. "
                            "fit(waveform_batches(split, 32), ...)")
        return self.checked_inputs(x)

    def checked_inputs(self, x):
        """`x` as float32 `[batch, samples]` if `check_batch` accepts it."""
        return tf.cast(super().checked_inputs(x), tf.float32)

    def prediction_terms(self, waveforms, training=False):
        """The InfoNCE terms of the clips, per k = 1..K: `(losses [B, T-k], correct
        [B, T-k], N)` (see `keras_ssl.losses.cpc_info_nce_terms`)."""
        z = self.encoder(waveforms, training=training)
        frames = z.shape[1]
        if frames is not None and frames <= self.prediction_steps:
            raise UserError(f"clips of {waveforms.shape[1]} samples give {frames} frames, not more than "
                            f"prediction_steps={self.prediction_steps}; use longer clips or fewer steps")
        c = self.context(z, training=training)
        return self._step_terms(self.predictor(c, training=training), z)

    def method_loss(self, data, training):
        waveforms = self._waveforms(data)
        return self._info_nce_loss(self.prediction_terms(waveforms, training), tf.shape(waveforms)[0])

    def step_metrics(self, waveforms, batch_size=64):
        """Per k = 1..K on `waveforms` (numpy `[N, samples]`), in batches of
        `batch_size`: `{"accuracy": [K], "loss": [K], "mi_bound": [K]}`; see
        `keras_ssl.evaluation.predictive_coding.step_metrics`."""
        from keras_ssl.evaluation.predictive_coding import step_metrics

        return step_metrics(self, waveforms, batch_size)

    # -- what it computes and serves ----------------------------------------

    def frames(self, waveforms, training=False):
        """`c_t` for every 10 ms frame: `[B, frames, context_dim]`."""
        return self.context(self.latents(waveforms, training=training), training=training)

    def latents(self, waveforms, training=False):
        """`z_t`: `[B, frames, latent_dim]`."""
        return self.encoder(self.checked_inputs(waveforms), training=training)

    def representation(self, waveforms, training=False):
        """The clip's representation: the mean over time of `c_t`, `[B, context_dim]`."""
        return tf.reduce_mean(self.frames(waveforms, training=training), axis=1)

    def probe_frames(self, waveforms):
        """What frozen-feature probes pool over time (`keras_ssl.evaluation.audio`),
        from one pass of the encoder: `{"context": c_t (its mean is the
        representation), "latent": z_t}`, each `[B, frames, D]`."""
        z = self.latents(waveforms)
        return {"context": self.context(z, training=False), "latent": z}

    def representation_dim(self, input_shape=None):
        return self.context_dim

    def serving_endpoints(self, input_shape=None, threshold=None):
        """`serving_default` (WAV bytes) and `embed_waveforms` (float32 samples),
        both -> `embedding` (the pooled context, L2-normalised) and `context`
        (`c_t` per 10 ms frame), at the clip length `input_shape = (samples,)`
        (default: the training clip length)."""
        from keras_ssl.audio_encoders import num_frames
        from keras_ssl.models.endpoints import ServingOutput, audio_endpoints

        if threshold is not None:
            raise UserError("a threshold only applies to models with a verify signature (Siamese, triplet), not CPC")
        samples = int(input_shape[0]) if input_shape else self.num_samples

        def serve(waveforms):
            c = tf.cast(self.frames(waveforms), tf.float32)
            return {"embedding": tf.math.l2_normalize(tf.reduce_mean(c, axis=1), axis=-1), "context": c}

        outputs = (ServingOutput("embedding", "float32", (self.context_dim,),
                                 "the clip's representation: mean over time of the context c_t, L2-normalised"),
                   ServingOutput("context", "float32", (num_frames(samples), self.context_dim),
                                 "the context c_t of every 10 ms frame (GRU state; not normalised)"))
        return audio_endpoints(outputs, serve)


def _build(run, options, encoder, dataset, stage=None):
    from keras_ssl.audio_encoders import num_frames

    frames = num_frames(dataset.num_samples)
    if frames <= options.prediction_steps:  # refused before the run directory is claimed
        raise UserError(f"clips of {dataset.num_samples} samples give {frames} frames, not more than "
                        f"prediction_steps={options.prediction_steps}; raise --audio_seconds or lower "
                        "--prediction_steps")
    return CPC(encoder, num_samples=dataset.num_samples, seed=run.seed, **option_arguments(options, CPC))


def _training_data(run, options, split, stage=None):
    from keras_ssl.data.sequences import waveform_batches

    steps = epoch_steps(split, run.batch_size)
    return TrainingData(waveform_batches(split, run.batch_size, seed=run.seed), steps, run.batch_size)


register(Method(
    name="cpc_audio", summary="Contrastive Predictive Coding on raw 16 kHz audio (van den Oord et al. 2018)",
    options=CPCAudioOptions, build=_build, training_data=_training_data, modality="audio",
    # The paper trains with Adam at 2e-4 and no weight decay; a 32-clip batch is ours (CPU).
    run_defaults=dict(model_dir="runs/cpc_audio", dataset="folder:data/spoken_digits", optimizer="adam",
                      learning_rate=2e-4, lr_scaling="none", warmup_epochs=0.0, weight_decay=0.0,
                      batch_size=32),
    evaluations=("probe", "info_nce"),
    smoke_options=dict(batch_size=8, audio_seconds=0.2, prediction_steps=4, num_negatives=16, context_dim=16),
))

# Image CPC's names, importable from here as before the split; imported after this
# file's `register`, so that the method registry's order stays cpc_audio, cpc_image.
from keras_ssl.models.cpc_image import (CPCImageOptions, ImageCPC, causal_grid_context, grid_size,  # noqa: E402
                                        patch_grid)

__all__ = ["CPC", "CPCAudioOptions", "gru_context", "step_predictors", "ImageCPC", "CPCImageOptions",
           "causal_grid_context", "patch_grid", "grid_size"]
