"""Contrastive Predictive Coding (van den Oord, Li, Vinyals 2018): on audio, and on images
(the paper's section 3.2, as in Henaff et al. 2019)."""

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


class _PredictiveCoding(MethodModel):
    """What audio and image CPC share: the trackers, the InfoNCE of every step
    k over sequences of latents, and its scaling for the global batch.

    A subclass sets the sub-models and its scalars, then calls `_track()`.
    """

    SUB_MODELS = ("encoder", "context", "predictor")

    def _track(self):
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.bound_tracker = keras.metrics.Mean(name="mi_bound")
        self.build()

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.bound_tracker]

    def _step_terms(self, predictions, latents):
        """`predictions` `[S, T, K * D]` (`W_k c_t` stacked), `latents` `[S, T, D]` ->
        per k = 1..K `(losses [S, T-k], correct [S, T-k], N)`; the negatives are
        drawn afresh for every optimizer step and k."""
        shape = tf.shape(predictions)
        predictions = tf.reshape(predictions, [shape[0], shape[1], self.prediction_steps, self.latent_dim])
        length = tf.shape(latents)[1]
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int32)
        return [losses.cpc_info_nce_terms(predictions[:, :length - k, k - 1], latents, k, self.num_negatives,
                                          tf.stack([self.seed, step * self.prediction_steps + k]))
                for k in range(1, self.prediction_steps + 1)]

    def _info_nce_loss(self, step_terms, n_local, sequences_per_example=1):
        """This replica's loss, `sum_k sum(terms_k) / (K * B_global * sequences_per_example
        * (T - k))`, so that the replicas' sum is the mean over k of the global mean;
        updates the trackers (means over k)."""
        n_global = tf.cast(global_batch_size(n_local), tf.float32)
        loss, mean_loss, accuracy, bound = 0.0, 0.0, 0.0, 0.0
        for terms, correct, candidates in step_terms:
            per_example = tf.cast(sequences_per_example, tf.float32) * tf.cast(tf.shape(terms)[1], tf.float32)
            loss += tf.reduce_sum(terms) / (n_global * per_example)
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
    whole batch. Defaults: GRU of 256 and K = 12 (the paper's section 3.1), 128 negatives
    (CPC_audio, Riviere et al. 2020).
    `num_samples`: the clip length the model is trained and served at.
    """

    INPUT_RANK = 2  # waveform batches [batch, samples]

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
        self._track()

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

    def check_batch(self, shape, dtype):
        """One `UserError` unless `shape`/`dtype` is a batch of float waveforms `[batch, samples]`."""
        if shape.rank != 2:
            raise UserError(f"CPC expects waveform batches [batch, samples] (16 kHz mono), got shape {shape}")
        if not dtype.is_floating:
            raise UserError(f"CPC expects float waveforms in [-1, 1], got {dtype.name}; scale int16 PCM by "
                            "1/32768 (keras_ssl.data.audio.read_wav does)")

    def _terms(self, waveforms, training):
        """Per k: `(losses [B, T-k], correct [B, T-k], N)`."""
        z = self.encoder(waveforms, training=training)
        frames = z.shape[1]
        if frames is not None and frames <= self.prediction_steps:
            raise UserError(f"clips of {waveforms.shape[1]} samples give {frames} frames, not more than "
                            f"prediction_steps={self.prediction_steps}; use longer clips or fewer steps")
        c = self.context(z, training=training)
        return self._step_terms(self.predictor(c, training=training), z)

    def method_loss(self, data, training):
        waveforms = self._waveforms(data)
        return self._info_nce_loss(self._terms(waveforms, training), tf.shape(waveforms)[0])

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


def _build(run, options, encoder, dataset, stage=None):
    from keras_ssl.audio_encoders import num_frames

    frames = num_frames(dataset.num_samples)
    if frames <= options.prediction_steps:  # refused before the run directory is claimed
        raise UserError(f"clips of {dataset.num_samples} samples give {frames} frames, not more than "
                        f"prediction_steps={options.prediction_steps}; raise --audio_seconds or lower "
                        "--prediction_steps")
    return CPC(encoder, context_dim=options.context_dim, prediction_steps=options.prediction_steps,
               num_negatives=options.num_negatives, num_samples=dataset.num_samples, seed=run.seed)


def _training_data(run, options, split, stage=None):
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
    evaluations=("probe", "info_nce"),
    smoke_options=dict(batch_size=8, audio_seconds=0.2, prediction_steps=4, num_negatives=16, context_dim=16),
))


def causal_grid_context(input_dim, context_dim=256, layers=3, name="grid_context"):
    """CPC's image context network: `c_{i,j}` sees the latents of rows <= i only.

    Each layer pads one row on top (and one column each side) and applies a
    2x3 convolution with ReLU, so row i of the output reads rows i-1 and i of
    its input: causal from top to bottom, as the masked (PixelCNN-style)
    context network of the paper's section 3.2; `layers` of them see
    `layers` rows up.
    """
    inputs = keras.Input(shape=(None, None, int(input_dim)), name="latent_grid")
    x = inputs
    for i in range(1, int(layers) + 1):
        x = keras.layers.ZeroPadding2D(((1, 0), (1, 1)), name=f"causal_pad{i}")(x)
        x = keras.layers.Conv2D(int(context_dim), (2, 3), name=f"causal_conv{i}")(x)
        x = keras.layers.ReLU(name=f"context{i}")(x)
    return keras.Model(inputs, x, name=name)


def patch_grid(images, patch_size, stride):
    """float images `[B, H, W, C]` -> overlapping patches `[B, rows, cols, p, p, C]`
    (top-left corners every `stride` px, only whole patches)."""
    patches = tf.image.extract_patches(images, [1, patch_size, patch_size, 1], [1, stride, stride, 1],
                                       [1, 1, 1, 1], "VALID")
    shape = tf.shape(patches)
    return tf.reshape(patches, [shape[0], shape[1], shape[2], patch_size, patch_size, images.shape[-1]])


def grid_size(side, patch_size, stride):
    """Patches along an image side of `side` px."""
    return (int(side) - int(patch_size)) // int(stride) + 1


@keras.saving.register_keras_serializable(package="keras_ssl")
class ImageCPC(_PredictiveCoding):
    """CPC on images (van den Oord et al. 2018, section 3.2; Henaff et al. 2019).

    Each image is cut into a grid of overlapping `patch_size` patches every
    `stride` px; the shared `encoder` (size-agnostic: built for `(None,
    None, C)`) maps every patch to a latent `z_{i,j}`; the causal
    `context` network gives `c_{i,j}` from the rows <= i; `W_k c_{i,j}`
    predicts `z_{i+k,j}`, the patch k rows below, for k = 1..K, with the same
    InfoNCE as audio CPC (`keras_ssl.losses.cpc_info_nce_terms`, each column
    a sequence running down the image, negatives drawn from every patch of
    the global batch). The representation (`predict`, served) is the encoder
    on the whole image, as the size-agnostic encoder allows; evaluation
    probes it like every image method.

    Metrics as audio CPC: `loss`, `accuracy`, `mi_bound` (means over k).
    Defaults (ours, for 28-32 px images): 8 px patches every 4 px (a 6x6 grid
    on 28 px; Henaff et al. take 64 px patches every 32 px of 256 px crops,
    the same half overlap), K = 3 rows ahead, 256 negatives, a context of 128
    (on Fashion-MNIST, K = 2 with 64 negatives probed 84.79% after 2 epochs,
    K = 3 with 256 negatives 86.18% after 3, 86.67% after 5). With K = 3 the
    image needs at least 4 rows of patches: 20 px at the default patches.
    """

    def __init__(self, encoder, context=None, predictor=None, patch_size=8, stride=4, context_dim=128,
                 prediction_steps=3, num_negatives=256, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.latent_dim = int(encoder.output_shape[-1])
        self.patch_size, self.stride = int(patch_size), int(stride)
        self.context_dim, self.prediction_steps = int(context_dim), int(prediction_steps)
        self.num_negatives, self.seed = int(num_negatives), int(seed)
        self.context = context if context is not None else causal_grid_context(self.latent_dim, self.context_dim)
        self.predictor = predictor if predictor is not None else step_predictors(
            self.context_dim, self.latent_dim, self.prediction_steps)
        self._track()

    def latent_grid(self, images, training=False):
        """`z_{i,j}`: `[B, rows, cols, D]` of the patches of images (uint8 or [0, 1])."""
        from keras_ssl.data.augment import to_float01

        patches = patch_grid(to_float01(images), self.patch_size, self.stride)
        shape = tf.shape(patches)
        flat = tf.reshape(patches, [-1, self.patch_size, self.patch_size, patches.shape[-1]])
        z = self.encoder(flat, training=training)
        return tf.reshape(z, [shape[0], shape[1], shape[2], self.latent_dim])

    def method_loss(self, data, training):
        x, _ = split_data(data)
        x = self.checked_inputs(x)  # [batch, H, W, C] with the encoder's channels, or one UserError
        rows = x.shape[1] and grid_size(x.shape[1], self.patch_size, self.stride)
        if rows is not None and rows <= self.prediction_steps:
            raise UserError(f"{x.shape[1]} px images give {rows} rows of {self.patch_size} px patches every "
                            f"{self.stride} px, not more than prediction_steps={self.prediction_steps}; use "
                            "smaller patches or fewer steps")
        z = self.latent_grid(x, training=training)
        c = self.context(z, training=training)

        def columns(t, width):  # [B, rows, cols, width] -> sequences down the image [B * cols, rows, width]
            t = tf.transpose(t, [0, 2, 1, 3])
            s = tf.shape(t)
            return tf.reshape(t, [s[0] * s[1], s[2], width])

        terms = self._step_terms(self.predictor(columns(c, self.context_dim), training=training),
                                 columns(z, self.latent_dim))
        return self._info_nce_loss(terms, tf.shape(x)[0], sequences_per_example=tf.shape(z)[2])

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, stride=self.stride, context_dim=self.context_dim,
                      prediction_steps=self.prediction_steps, num_negatives=self.num_negatives, seed=self.seed)
        return config


@dataclasses.dataclass
class CPCImageOptions:
    """CPC on images (the paper's section 3.2; Henaff et al. 2019). The defaults
    are ours for 28-32 px images: 8 px patches every 4 px (Henaff et al.: 64 px
    every 32 px, the same half overlap), K = 3 rows ahead, 256 negatives, a
    causal context of 128 channels (`ImageCPC`'s defaults, measured there;
    images of at least 20 px with them); the patch encoder is `--encoder`."""

    patch_size: int = option(8, "patch side in pixels", check=lambda v: v >= 4, requirement=">= 4")
    patch_stride: int = option(4, "pixels between patch corners (half the patch: Henaff et al.)",
                               check=lambda v: v >= 1, requirement=">= 1")
    context_dim: int = option(128, "causal context network channels", check=lambda v: v >= 1,
                              requirement=">= 1")
    prediction_steps: int = option(3, "patch rows predicted below, K", check=lambda v: v >= 1,
                                   requirement=">= 1")
    num_negatives: int = option(256, "negatives per prediction, drawn from every patch of the global batch",
                                check=lambda v: v >= 1, requirement=">= 1")


def _build_image(run, options, encoder, dataset, stage=None):
    rows = grid_size(dataset.image_shape[0], options.patch_size, options.patch_stride)
    if rows <= options.prediction_steps:
        raise UserError(f"{dataset.image_shape[0]} px images give {rows} rows of patches, not more than "
                        f"prediction_steps={options.prediction_steps}; lower --patch_size or --prediction_steps")
    return ImageCPC(encoder, patch_size=options.patch_size, stride=options.patch_stride,
                    context_dim=options.context_dim, prediction_steps=options.prediction_steps,
                    num_negatives=options.num_negatives, seed=run.seed)


def _image_training_data(run, options, split, stage=None):
    from keras_ssl.data.views import image_batches

    return TrainingData(image_batches(split, run.batch_size, seed=run.seed), epoch_steps(split, run.batch_size),
                        run.batch_size)


register(Method(
    name="cpc_image", summary="Contrastive Predictive Coding on a grid of image patches (van den Oord et al. "
                              "2018, sec. 3.2)",
    options=CPCImageOptions, build=_build_image, training_data=_image_training_data, patch_encoder=True,
    run_defaults=dict(model_dir="runs/cpc_image", optimizer="adam", learning_rate=1e-3, lr_scaling="none",
                      warmup_epochs=0.5, weight_decay=0.0, augment="none", batch_size=64),
    smoke_options=dict(batch_size=8, image_size=16, patch_stride=4, prediction_steps=1, num_negatives=16,
                       context_dim=16),
))
