"""Contrastive Predictive Coding on audio (van den Oord, Li, Vinyals 2018)."""

import dataclasses
import math

import keras
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.errors import UserError
from keras_ssl.models.common import MethodModel, global_batch_size, split_data
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register


def gru_context(input_dim, context_dim=256, name="context"):
    """CPC's autoregressive context network: a GRU over the latents, `c_t` for every t."""
    inputs = keras.Input(shape=(None, int(input_dim)), name="latents")
    outputs = keras.layers.GRU(int(context_dim), return_sequences=True, name="gru")(inputs)
    return keras.Model(inputs, outputs, name=name)


def step_predictors(context_dim, latent_dim, steps=12, name="predictor"):
    """The K linear maps `W_k` of CPC as one bias-free Dense: `c_t` -> `[W_1 c_t, ..., W_K c_t]`."""
    inputs = keras.Input(shape=(None, int(context_dim)), name="context")
    outputs = keras.layers.Dense(int(steps) * int(latent_dim), use_bias=False, name="w_k")(inputs)
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="keras_ssl")
class CPC(MethodModel):
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

    `fit()` takes waveform batches `x` (float32 `[B, samples]` in [-1, 1], 16
    kHz) or `(x, labels)` (labels unused). Metrics: `loss`, `accuracy` (the
    positive scored highest, mean over k) and `mi_bound`, the InfoNCE lower
    bound on I(z_{t+k}; c_t) in nats, `log(N) - loss` with `N` candidates
    (mean over k). `step_metrics` gives them per k.

    Under R replicas each replica returns `sum(local terms_k) / (K * B_global *
    (T - k))` summed over k, so loss and gradients equal one device on the
    whole batch. Defaults: GRU of 256 and K = 12 (the paper's section 3.1), 128 negatives
    (CPC_audio, Riviere et al. 2020).
    `num_samples`: the clip length the model is trained and served at.
    """

    SUB_MODELS = ("encoder", "context", "predictor")

    def __init__(self, encoder, context=None, predictor=None, context_dim=256, prediction_steps=12,
                 num_negatives=128, num_samples=16000, seed=0, **kwargs):
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
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.bound_tracker = keras.metrics.Mean(name="mi_bound")
        self.build()

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.bound_tracker]

    def _waveforms(self, data):
        x, _ = split_data(data)
        if isinstance(x, (tuple, list)) or x.shape.rank != 2:
            raise UserError(f"CPC expects waveform batches [batch, samples], got {getattr(x, 'shape', type(x))}")
        return tf.cast(x, tf.float32)

    def _terms(self, waveforms, training):
        """Per k: `(losses [B, T-k], correct [B, T-k], N)`."""
        z = self.encoder(waveforms, training=training)
        frames = z.shape[1]
        if frames is not None and frames <= self.prediction_steps:
            raise UserError(f"clips of {waveforms.shape[1]} samples give {frames} frames, not more than "
                            f"prediction_steps={self.prediction_steps}; use longer clips or fewer steps")
        c = self.context(z, training=training)
        predictions = self.predictor(c, training=training)
        shape = tf.shape(predictions)
        predictions = tf.reshape(predictions, [shape[0], shape[1], self.prediction_steps, self.latent_dim])
        length = tf.shape(z)[1]
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int32)
        return [losses.cpc_info_nce_terms(predictions[:, :length - k, k - 1], z, k, self.num_negatives,
                                          tf.stack([self.seed, step * self.prediction_steps + k]))
                for k in range(1, self.prediction_steps + 1)]

    def method_loss(self, data, training):
        waveforms = self._waveforms(data)
        n_local = tf.shape(waveforms)[0]
        n_global = tf.cast(global_batch_size(n_local), tf.float32)
        loss, mean_loss, accuracy, bound = 0.0, 0.0, 0.0, 0.0
        for terms, correct, candidates in self._terms(waveforms, training):
            per_sequence = tf.cast(tf.shape(terms)[1], tf.float32)
            loss += tf.reduce_sum(terms) / (n_global * per_sequence)
            local = tf.reduce_mean(terms)
            mean_loss += local
            accuracy += tf.reduce_mean(tf.cast(correct, tf.float32))
            bound += tf.math.log(tf.cast(candidates, tf.float32)) - local
        k = float(self.prediction_steps)
        weight = tf.cast(n_local, tf.float32)
        self.loss_tracker.update_state(mean_loss / k, sample_weight=weight)
        self.accuracy_tracker.update_state(accuracy / k, sample_weight=weight)
        self.bound_tracker.update_state(bound / k, sample_weight=weight)
        return loss / k

    def step_metrics(self, waveforms, batch_size=64):
        """Per k = 1..K on `waveforms` (numpy `[N, samples]`), in batches of
        `batch_size` (negatives drawn from each batch): `{"accuracy": [K],
        "loss": [K], "mi_bound": [K]}` as lists of floats."""
        import numpy as np

        total_loss = np.zeros(self.prediction_steps)
        total_correct = np.zeros(self.prediction_steps)
        total_bound = np.zeros(self.prediction_steps)
        batches = 0
        terms_fn = tf.function(lambda x: [(tf.reduce_mean(t), tf.reduce_mean(tf.cast(c, tf.float32)), n)
                                          for t, c, n in self._terms(x, False)], reduce_retracing=True)
        for start in range(0, len(waveforms) - batch_size + 1, batch_size):
            for i, (loss, acc, n) in enumerate(terms_fn(tf.constant(waveforms[start:start + batch_size]))):
                total_loss[i] += float(loss)
                total_correct[i] += float(acc)
                total_bound[i] += math.log(float(n)) - float(loss)
            batches += 1
        if not batches:
            raise UserError(f"step metrics need at least {batch_size} clips, got {len(waveforms)}")
        return {"accuracy": list(total_correct / batches), "loss": list(total_loss / batches),
                "mi_bound": list(total_bound / batches)}

    # -- what it computes and serves ----------------------------------------

    def frames(self, waveforms, training=False):
        """`c_t` for every 10 ms frame: `[B, frames, context_dim]`."""
        return self.context(self.encoder(tf.cast(waveforms, tf.float32), training=training), training=training)

    def latents(self, waveforms, training=False):
        """`z_t`: `[B, frames, latent_dim]`."""
        return self.encoder(tf.cast(waveforms, tf.float32), training=training)

    def representation(self, waveforms, training=False):
        """The clip's representation: the mean over time of `c_t`, `[B, context_dim]`."""
        return tf.reduce_mean(self.frames(waveforms, training=training), axis=1)

    def probe_points(self):
        """The pooled context (the representation) and the pooled latents `z`."""
        return {"context": self.representation,
                "latent": lambda waveforms: tf.reduce_mean(self.latents(waveforms), axis=1)}

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

    def get_config(self):
        config = super().get_config()
        config.update(context_dim=self.context_dim, prediction_steps=self.prediction_steps,
                      num_negatives=self.num_negatives, num_samples=self.num_samples, seed=self.seed)
        return config


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


def _build(run, options, encoder, dataset):
    return CPC(encoder, context_dim=options.context_dim, prediction_steps=options.prediction_steps,
               num_negatives=options.num_negatives, num_samples=dataset.num_samples, seed=run.seed)


def _training_data(run, options, split):
    from keras_ssl.data.sequences import waveform_batches

    steps = epoch_steps(split, run.batch_size)
    return TrainingData(waveform_batches(split, run.batch_size, seed=run.seed), steps, run.batch_size)


register(Method(
    name="cpc_audio", summary="Contrastive Predictive Coding on raw 16 kHz audio (van den Oord et al. 2018)",
    options=CPCAudioOptions, build=_build, training_data=_training_data, modality="audio",
    # The paper trains with Adam at 2e-4 and no weight decay; a 32-clip batch is ours (CPU).
    run_defaults=dict(model_dir="runs/cpc_audio", dataset="folder:data/spoken_digits", optimizer="adam",
                      learning_rate=2e-4, lr_scaling="none", warmup_epochs=0.0, weight_decay=0.0, augment="none",
                      batch_size=32),
    evaluations=("info_nce",),
    smoke_options=dict(batch_size=8, audio_seconds=0.2, prediction_steps=4, num_negatives=16, context_dim=16),
))
