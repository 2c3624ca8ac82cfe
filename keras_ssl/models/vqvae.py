"""VQ-VAE (van den Oord, Vinyals, Kavukcuoglu 2017): a grid of discrete codes from a
codebook, and a decoder with a discretised-logistic likelihood of the 8-bit image."""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.losses.generative import discretized_logistic_nll, vector_quantize
from keras_ssl.losses.replicas import gather_across_replicas
from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register

# Laplace smoothing of the EMA code counts, Sonnet's VectorQuantizerEMA `epsilon`: an unused
# code's count stays positive, so its mean never divides by zero.
EMA_EPSILON = 1e-5


@dataclasses.dataclass
class VQVAEOptions:
    """VQ-VAE's hyper-parameters. Sources: beta = 0.25 (van den Oord et al. 2017,
    sec. 3.2 and 4.1); 128 codes of 16 dimensions, the keras.io MNIST VQ-VAE example's
    (Paul 2021; the paper's ImageNet model: K = 512, Sonnet's example: K = 512, D = 64),
    sized for a 7x7 grid of 28 px images on a CPU; a decoder of 64 channels (the paper's:
    256); EMA codebook updates with decay 0.99 (the paper's appendix A.1, Sonnet's
    VectorQuantizerEMA) and dead-code restarts (Jukebox's random restarts, Dhariwal et al.
    2020) are off by default, as in the paper's main experiments."""

    codebook_size: int = option(128, "codes in the codebook, K (keras.io MNIST example: 128; the paper's ImageNet "
                                "model: 512)",
                                check=lambda v: v >= 2, requirement=">= 2")
    code_dim: int = option(16, "dimensions of a code vector, D (keras.io MNIST example: 16; Sonnet's example: 64)",
                           check=lambda v: v >= 1, requirement=">= 1")
    commitment_cost: float = option(0.25, "beta, the weight of the commitment loss (the paper: 0.25)",
                                    check=lambda v: v >= 0, requirement=">= 0")
    decoder_hidden_dim: int = option(64, "decoder channels (the paper: 256)", check=lambda v: v >= 1,
                                     requirement=">= 1")
    codebook_ema: bool = option(False, "update the codebook by moving averages of its encoder outputs instead of "
                                "the codebook loss's gradient (the paper's appendix A.1)")
    codebook_ema_decay: float = option(0.99, "decay of the codebook moving averages (the paper: 0.99)",
                                       check=lambda v: 0 < v < 1, requirement="in (0, 1)")
    dead_code_steps: int = option(0, "restart a code unused for this many steps at a random encoder output of the "
                                  "batch (0: never)", check=lambda v: v >= 0, requirement=">= 0")


def _replica_sum(t):
    """`t` summed over the replicas of the current replica context (itself on one device)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return t
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, t)


def eight_bit(images):
    """The 8-bit values of images, float32 in {0, ..., 255}: uint8 as they are, floats in
    [0, 1] as `round(x * 255)` (clipped first)."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32)
    return tf.round(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0) * 255.0)


def code_usage(counts):
    """`(perplexity, fraction used)` of code counts `[K]`: `exp(-sum_k p_k log p_k)` with
    `p = counts / sum(counts)` (K when every code is used equally, 1 when one code is), and
    the fraction of the K codes with a count."""
    counts = tf.cast(counts, tf.float32)
    p = counts / tf.maximum(tf.reduce_sum(counts), 1.0)
    entropy = -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p))
    return tf.exp(entropy), tf.reduce_mean(tf.cast(counts > 0, tf.float32))


def upsampling_levels(grid_shape, image_shape):
    """The stride-2 upsamplings that take a `(h, w)` grid to at least the image's `(H, W)`."""
    levels = 0
    while (grid_shape[0] << levels) < image_shape[0] or (grid_shape[1] << levels) < image_shape[1]:
        levels += 1
    return levels


def vqvae_decoder(grid_shape, code_dim, image_shape, hidden_dim=VQVAEOptions.decoder_hidden_dim, name="decoder"):
    """The paper's decoder (sec. 4.1) at `hidden_dim` channels: a 3x3 convolution, two
    residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv without bias), then one 4x4 stride-2
    Conv2DTranspose per doubling of the grid (ReLU between), the last giving 2C channels
    per pixel in float32 (the logistic mean's logit and its log-scale), cropped at the
    centre to the image's `(H, W)`: a 7x7 grid gives 28 px, 2x2 gives 8 px, and a grid
    that does not divide the image (ResNet's 4x4 of 28 px) is upsampled past it and cut."""
    (h, w), (height, width, channels) = grid_shape, image_shape
    levels = upsampling_levels((h, w), (height, width))
    codes = keras.Input((h, w, int(code_dim)), name="quantized")
    x = keras.layers.Conv2D(hidden_dim, 3, padding="same", name="conv_in")(codes)
    for i in (1, 2):
        y = keras.layers.ReLU(name=f"residual{i}_relu_a")(x)
        y = keras.layers.Conv2D(hidden_dim, 3, padding="same", name=f"residual{i}_conv_a")(y)
        y = keras.layers.ReLU(name=f"residual{i}_relu_b")(y)
        # no bias: Grappler's remapper fails (an error line every trace) fusing a 1x1 conv with
        # its bias into the Add and ReLU that follow
        y = keras.layers.Conv2D(hidden_dim, 1, use_bias=False, name=f"residual{i}_conv_b")(y)
        x = keras.layers.Add(name=f"residual{i}")([x, y])
    x = keras.layers.ReLU(name="relu")(x)
    for i in range(1, levels):
        x = keras.layers.Conv2DTranspose(hidden_dim, 4, strides=2, padding="same", activation="relu",
                                         name=f"up{i}")(x)
    if levels:
        x = keras.layers.Conv2DTranspose(2 * channels, 4, strides=2, padding="same", dtype="float32",
                                         name="pixels")(x)
    else:
        x = keras.layers.Conv2D(2 * channels, 3, padding="same", dtype="float32", name="pixels")(x)
    extra_h, extra_w = (h << levels) - height, (w << levels) - width
    x = keras.layers.Cropping2D(((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2)),
                                dtype="float32", name="crop")(x)
    return keras.Model(codes, x, name=name)


@keras.saving.register_keras_serializable(package="keras_ssl")
class VQVAE(MethodModel):
    """VQ-VAE (van den Oord, Vinyals, Kavukcuoglu 2017) on 8-bit images.

    The run's `encoder` keeps its grid before the global pooling
    (`keras_ssl.encoders.with_unpooled`: the small CNN gives 7x7 of 28 px images,
    4x4 of 16 px, 2x2 of the 8 px digits: a quarter of the side, the paper's 32 -> 8),
    `pre_quantizer` (a 1x1 convolution) maps it to `z_e` of `code_dim`; each vector
    is replaced by its nearest code `e_k` of the `codebook` (`codebook_size` x
    `code_dim`, a weight of the model), the straight-through gradient copying the
    decoder's gradient to `z_e` (`keras_ssl.losses.vector_quantize`); the `decoder`
    gives per pixel a logistic's mean (a sigmoid) and log-scale, and the
    reconstruction term is the discretised-logistic NLL of the 8-bit image
    (`discretized_logistic_nll`, so bits/dim compare with the VAE's). The loss
    (the paper's eq. 3):

        loss = NLL(x | z_q) / (H W C) + mean((e - sg[z_e])^2) + beta * mean((z_e - sg[e])^2)

    the NLL per dimension (nats per image over H W C), the codebook and commitment
    terms means over every element of the global batch's grids (Sonnet's and
    keras.io's weighting, a per-pixel reconstruction term beside per-element
    quantisation terms). Under R replicas each replica returns
    `sum(its NLLs) / (H W C B_global) + (B_local / B_global) * (its codebook and
    commitment means)`, so that loss and gradients equal one device on the global
    batch.

    With `codebook_ema`, the codebook is no trainable weight and the codebook loss
    leaves the loss (it is still reported); after every step (`after_apply`), with
    `n_k` the vectors of the global batch assigned to code k and `s_k` their sum,
    decay `g` (the paper's appendix A.1, eqs. 6-8; Sonnet's VectorQuantizerEMA):

        N_k <- g N_k + (1 - g) n_k        m_k <- g m_k + (1 - g) s_k
        e_k <- m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j

    (Laplace smoothing, eps = 1e-5), starting from `N_k = 1`, `m_k = e_k` (each
    initial code counted once, so an unused code keeps its vector; Sonnet starts at
    zero with a bias correction). With `dead_code_steps = N > 0`, a code unused by
    the global batch for N steps in a row is re-initialised to an encoder output of
    the batch drawn at random (seeded by `seed` and the step; with EMA its `N_k = 1`,
    `m_k` the new vector), as Jukebox's random restarts (Dhariwal et al. 2020). The
    counts and sums are summed over the replicas (`all_reduce`) and the restart
    draws from the gathered global batch with the same seed on every replica, so
    every replica writes the same codebook, the one device's.

    `fit()` takes image batches `x` (uint8, or float in [0, 1] read as
    `round(255 x)`), or `(x, labels)` (the labels are unused). Metrics: `loss`,
    `reconstruction` (NLL, nats per image), `codebook_loss`, `commitment_loss`,
    `perplexity` (exp of the entropy of the global batch's code usage) and
    `codes_used` (the fraction of the K codes it uses). The representation
    (`predict`, `serving_default`) is the quantised grid mean-pooled; the export
    also serves `encode` (images -> codes `[h, w]`), `decode` (codes, row-major
    flattened, as `tokens` -> uint8 images: the decoder's mean, rounded) and
    `reconstruct` (images -> uint8 images).
    """

    SUB_MODELS = ("encoder", "pre_quantizer", "decoder")
    TRACKED = ("loss", "reconstruction", "codebook_loss", "commitment_loss", "perplexity", "codes_used")

    def __init__(self, encoder, pre_quantizer=None, decoder=None, image_shape=None,
                 codebook_size=VQVAEOptions.codebook_size, code_dim=VQVAEOptions.code_dim,
                 commitment_cost=VQVAEOptions.commitment_cost, decoder_hidden_dim=VQVAEOptions.decoder_hidden_dim,
                 codebook_ema=VQVAEOptions.codebook_ema, codebook_ema_decay=VQVAEOptions.codebook_ema_decay,
                 dead_code_steps=VQVAEOptions.dead_code_steps, seed=0, **kwargs):
        super().__init__(**kwargs)
        from keras_ssl.encoders import with_unpooled

        for name, value, ok, requirement in (
                ("codebook_size", codebook_size, codebook_size >= 2, ">= 2"),
                ("code_dim", code_dim, code_dim >= 1, ">= 1"),
                ("commitment_cost", commitment_cost, commitment_cost >= 0, ">= 0"),
                ("decoder_hidden_dim", decoder_hidden_dim, decoder_hidden_dim >= 1, ">= 1"),
                ("codebook_ema_decay", codebook_ema_decay, 0 < codebook_ema_decay < 1, "in (0, 1)"),
                ("dead_code_steps", dead_code_steps, dead_code_steps >= 0, ">= 0")):
            if not ok:
                raise UserError(f"{name} must be {requirement}, got {value!r}")
        self.encoder = encoder
        shape = tuple(image_shape) if image_shape is not None else tuple(encoder.input_shape[1:])
        if len(shape) != 3 or None in shape:
            raise UserError(f"VQVAE needs the image shape (H, W, C) its decoder gives, got {shape}; pass "
                            "image_shape= for an encoder of any image size")
        self.image_shape = tuple(int(d) for d in shape)
        self.codebook_size, self.code_dim = int(codebook_size), int(code_dim)
        self.commitment_cost, self.decoder_hidden_dim = float(commitment_cost), int(decoder_hidden_dim)
        self.codebook_ema, self.codebook_ema_decay = bool(codebook_ema), float(codebook_ema_decay)
        self.dead_code_steps, self.seed = int(dead_code_steps), int(seed)
        # the encoder's grid before its pooling, sharing its layers: kept out of Keras's tracking,
        # so that the encoder's weights are saved once (as `encoder`)
        object.__setattr__(self, "_grid_encoder", with_unpooled(encoder))
        # each replica's vectors and codes of the step, from method_loss to after_apply (the replicas
        # of a MirroredStrategy step run in threads on this one object: keyed by replica context)
        object.__setattr__(self, "_step_codes", {})
        grid = self._grid_encoder(tf.zeros([1, *self.image_shape]))["unpooled"]
        self.grid_shape = (int(grid.shape[1]), int(grid.shape[2]))
        self.pre_quantizer = pre_quantizer if pre_quantizer is not None else keras.Sequential(
            [keras.Input((None, None, int(grid.shape[-1]))), keras.layers.Conv2D(self.code_dim, 1, name="to_code")],
            name="pre_quantizer")
        self.decoder = decoder if decoder is not None else vqvae_decoder(
            self.grid_shape, self.code_dim, self.image_shape, self.decoder_hidden_dim)
        # Sonnet's codebook initialiser: VarianceScaling(distribution="uniform"), fan-in D
        limit = math.sqrt(3.0 / self.code_dim)
        state = dict(trainable=False, autocast=False, aggregation="only_first_replica")
        self.codebook = self.add_weight(shape=(self.codebook_size, self.code_dim), dtype="float32",
                                        initializer=keras.initializers.RandomUniform(-limit, limit), name="codebook",
                                        **dict(state, trainable=not self.codebook_ema))
        if self.codebook_ema:
            self.ema_count = self.add_weight(shape=(self.codebook_size,), dtype="float32", initializer="ones",
                                             name="ema_count", **state)
            self.ema_sum = self.add_weight(shape=(self.codebook_size, self.code_dim), dtype="float32",
                                           initializer="zeros", name="ema_sum", **state)
            self.ema_sum.assign(self.codebook.value)
        if self.dead_code_steps:
            self.unused_steps = self.add_weight(shape=(self.codebook_size,), dtype="int32", initializer="zeros",
                                                name="unused_steps", **state)
        self.build()

    # -- the parts ------------------------------------------------------------

    def encode_grid(self, images, training=False):
        """`z_e`: float32 `[B, h, w, code_dim]` of images (uint8 or float in [0, 1])."""
        grid = self._grid_encoder(self.input_modality().as_model_input(images), training=training)["unpooled"]
        return tf.cast(self.pre_quantizer(grid, training=training), tf.float32)

    def quantize_grid(self, z):
        """`(quantized, codes, codebook_loss, commitment_loss)` of `z` (`vector_quantize`)."""
        return vector_quantize(z, self.codebook.value, self.commitment_cost)

    def pixel_parameters(self, quantized, training=False):
        """The decoder's logistic per pixel: `(mean in [0, 1], log_scale)`, float32 `[B, H, W, C]`."""
        logits, log_scale = tf.split(tf.cast(self.decoder(quantized, training=training), tf.float32), 2, axis=-1)
        return tf.sigmoid(logits), log_scale

    def encode_codes(self, images):
        """The codes of images: int32 `[B, h, w]`, the nearest code of each grid vector."""
        return self.quantize_grid(self.encode_grid(self.checked_inputs(images)))[1]

    def code_grid(self, codes):
        """int32 `[B, h, w]` of codes `[B, h, w]` or row-major `[B, h * w]`; codes given
        eagerly are checked here (shape, integers, in [0, K)); the export's `tokens` input
        checks its own."""
        (h, w), k = self.grid_shape, self.codebook_size
        if tf.executing_eagerly():
            values = np.asarray(codes)
            if values.ndim not in (2, 3) or values.shape[1:] not in ((h * w,), (h, w)):
                raise UserError(f"codes must be [batch, {h}, {w}] or row-major [batch, {h * w}], got shape "
                                f"{values.shape}")
            if values.dtype.kind not in "iu":
                raise UserError(f"codes must be integers, got {values.dtype}")
            if values.size and (values.min() < 0 or values.max() >= k):
                raise UserError(f"codes must be in [0, {k}), got values from {values.min()} to {values.max()}")
        return tf.reshape(tf.cast(codes, tf.int32), [-1, h, w])

    def code_vectors(self, codes):
        """The code vectors of int codes `[B, h, w]` or row-major `[B, h * w]`: `[B, h, w, D]`
        (checked by `code_grid`)."""
        codes = self.code_grid(codes)
        return tf.gather(self.codebook.value, codes)

    def decode_codes(self, codes):
        """Images from codes (`[B, h, w]` or row-major `[B, h * w]`): the decoder's mean,
        float32 `[B, H, W, C]` in [0, 1]."""
        return self.pixel_parameters(self.code_vectors(codes))[0]

    def reconstruct(self, images):
        """`decode_codes(encode_codes(images))`: float32 images in [0, 1]."""
        return self.decode_codes(self.encode_codes(images))

    def encode_and_score(self, images):
        """`(codes [B, h, w], NLL [B])`: the codes of images and the decoder's negative
        log-likelihood of their 8-bit values given those codes, in nats per image."""
        images = self.checked_inputs(images)
        codes = self.quantize_grid(self.encode_grid(images))[1]
        mean, log_scale = self.pixel_parameters(self.code_vectors(codes))
        return codes, discretized_logistic_nll(eight_bit(images), mean, log_scale)

    def representation(self, images, training=False):
        """The quantised grid mean-pooled: float32 `[B, code_dim]`."""
        codes = self.quantize_grid(self.encode_grid(images, training))[1]
        return tf.reduce_mean(self.code_vectors(codes), axis=[1, 2])

    # -- the step ---------------------------------------------------------------

    def method_loss(self, data, training):
        x, _ = split_data(data)  # class labels, when a pipeline gives them, are not used
        if isinstance(x, (tuple, list)):
            raise UserError("VQVAE expects image batches x (or (x, labels))")
        x = self.checked_inputs(x)
        z = self.encode_grid(x, training)
        quantized, codes, codebook_loss, commitment_loss = self.quantize_grid(z)
        mean, log_scale = self.pixel_parameters(quantized, training)
        nll = discretized_logistic_nll(eight_bit(x), mean, log_scale)
        n_local = tf.shape(x)[0]
        n_global = tf.cast(global_batch_size(n_local), tf.float32)
        share = tf.cast(n_local, tf.float32) / n_global  # this replica's part of the global batch's grid elements
        dims = float(np.prod(self.image_shape))
        quantisation = commitment_loss if self.codebook_ema else codebook_loss + commitment_loss
        loss = tf.reduce_sum(nll) / (dims * n_global) + share * quantisation

        flat_codes = tf.reshape(codes, [-1])
        counts = _replica_sum(tf.math.unsorted_segment_sum(tf.ones_like(flat_codes, tf.float32), flat_codes,
                                                           self.codebook_size))
        perplexity, used = code_usage(counts)
        weight = tf.cast(n_local, tf.float32)
        for name, value in (("loss", tf.reduce_mean(nll) / dims + quantisation),
                            ("reconstruction", tf.reduce_mean(nll)), ("codebook_loss", codebook_loss),
                            ("commitment_loss", commitment_loss)):
            self.trackers[name].update_state(value, sample_weight=weight)
        self.trackers["perplexity"].update_state(perplexity)  # of the global batch: the same on every replica
        self.trackers["codes_used"].update_state(used)
        if training and (self.codebook_ema or self.dead_code_steps):  # for after_apply, in this step
            self._step_codes[id(tf.distribute.get_replica_context())] = (
                tf.stop_gradient(tf.reshape(z, [-1, self.code_dim])), flat_codes, counts)
        return loss

    def after_apply(self):
        """The EMA codebook update and the dead-code restarts (see the class docstring), from
        the vectors and codes of this step's global batch."""
        step = self._step_codes.pop(id(tf.distribute.get_replica_context()), None)
        if step is None:
            return
        z, codes, counts = step
        if self.codebook_ema:
            decay = self.codebook_ema_decay
            sums = _replica_sum(tf.math.unsorted_segment_sum(z, codes, self.codebook_size))
            count = decay * self.ema_count + (1.0 - decay) * counts
            total = decay * self.ema_sum + (1.0 - decay) * sums
            self.ema_count.assign(count)
            self.ema_sum.assign(total)
            n = tf.reduce_sum(count)
            smoothed = (count + EMA_EPSILON) / (n + self.codebook_size * EMA_EPSILON) * n
            self.codebook.assign(total / smoothed[:, None])
        if self.dead_code_steps:
            unused = tf.where(counts > 0, 0, self.unused_steps + 1)
            dead = unused >= self.dead_code_steps
            rows, _ = gather_across_replicas(z)  # the global batch's vectors, in replica order
            seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
            drawn = tf.gather(rows, tf.random.stateless_uniform([self.codebook_size], seed, 0, tf.shape(rows)[0],
                                                                dtype=tf.int32))
            self.codebook.assign(tf.where(dead[:, None], drawn, self.codebook))
            if self.codebook_ema:
                self.ema_sum.assign(tf.where(dead[:, None], drawn, self.ema_sum))
                self.ema_count.assign(tf.where(dead, 1.0, self.ema_count))
            self.unused_steps.assign(tf.where(dead, 0, unused))

    # -- what it serves -----------------------------------------------------------

    def to_uint8(self, intensities):
        """Float intensities in [0, 1] -> uint8, rounded."""
        return tf.cast(tf.round(tf.clip_by_value(intensities, 0.0, 1.0) * 255.0), tf.uint8)

    def serving_endpoints(self, image_shape, threshold=None):
        """The embedding signatures (the quantised grid mean-pooled, L2-normalised), `encode`
        (images -> `codes` int32 `[h, w]`), `decode` (`codes` as row-major `tokens` of
        length h * w -> uint8 `images`) and `reconstruct` (images -> uint8 `images`)."""
        (h, w), k = self.grid_shape, self.codebook_size
        images = ServingOutput("images", "uint8", self.image_shape, "decoded images: the decoder's mean, rounded")
        codes = ServingOutput("codes", "int32", (h, w), f"the nearest of the {k} codes of each grid cell")
        return super().serving_endpoints(image_shape, threshold) + [
            Endpoint("encode", (ServingInput("images"),), (codes,), lambda x: {"codes": self.encode_codes(x)}),
            Endpoint("decode", (ServingInput("codes", "tokens", shape=(h * w,), vocabulary_size=k),), (images,),
                     lambda c: {"images": self.to_uint8(self.decode_codes(c))}),
            Endpoint("reconstruct", (ServingInput("images"),), (images,),
                     lambda x: {"images": self.to_uint8(self.reconstruct(x))}),
        ]


def _build(run, options, encoder, dataset, stage=None):
    return VQVAE(encoder, image_shape=dataset.image_shape, seed=run.seed, **option_arguments(options, VQVAE))


def _training_data(run, options, split, stage=None):
    from keras_ssl.data.views import image_batches

    return TrainingData(image_batches(split, run.batch_size, seed=run.seed), epoch_steps(split, run.batch_size),
                        run.batch_size)


register(Method(
    name="vqvae", summary="VQ-VAE: a grid of discrete codes, discretised logistic likelihood (van den Oord et al. "
                          "2017)",
    options=VQVAEOptions, build=_build, training_data=_training_data,
    # Adam at 1e-3 (the keras.io example's; the paper's 2e-4 is for 250k steps), batch 128 (the paper's)
    run_defaults=dict(model_dir="runs/vqvae", optimizer="adam", learning_rate=1e-3, lr_scaling="none",
                      warmup_epochs=0.0, weight_decay=0.0, augment="none", batch_size=128),
    evaluations=("probe", "codebook", "reconstruction"),
    smoke_options=dict(augment="none", batch_size=16, codebook_size=32, code_dim=8, decoder_hidden_dim=16),
))
