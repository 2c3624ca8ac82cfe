"""VQ-VAE (van den Oord, Vinyals, Kavukcuoglu 2017): a grid of discrete codes from a
codebook, and a decoder with a discretised-logistic likelihood of the 8-bit image."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.losses.generative import discretized_logistic_nll
from keras_ssl.models.codebook import EMA_EPSILON, Codebook, CodebookOptions  # noqa: F401 (EMA_EPSILON: as before)
from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register


@dataclasses.dataclass
class VQVAEOptions(CodebookOptions):
    """VQ-VAE's hyper-parameters: the codebook's (`CodebookOptions`: 128 codes of 16
    dimensions, the keras.io MNIST VQ-VAE example's, sized for a 7x7 grid of 28 px images
    on a CPU; beta = 0.25; EMA and restarts off) and a decoder of 64 channels (the
    paper's: 256)."""

    decoder_hidden_dim: int = option(64, "decoder channels (the paper: 256)", check=lambda v: v >= 1,
                                     requirement=">= 1")


def eight_bit(images):
    """The 8-bit values of images, float32 in {0, ..., 255}: uint8 as they are, floats in
    [0, 1] as `round(x * 255)` (clipped first)."""
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32)
    return tf.round(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0) * 255.0)


def upsampling_levels(grid_shape, image_shape):
    """The stride-2 upsamplings that take a `(h, w)` grid to at least the image's `(H, W)`."""
    levels = 0
    while (grid_shape[0] << levels) < image_shape[0] or (grid_shape[1] << levels) < image_shape[1]:
        levels += 1
    return levels


def residual_stack(inputs, hidden_dim, conv, name=""):
    """The paper's decoder trunk (sec. 4.1): a kernel-3 convolution to `hidden_dim`
    channels, two residual blocks (ReLU, kernel-3 conv, ReLU, kernel-1 conv without
    bias), a ReLU; `conv` is `keras.layers.Conv2D` (images) or `Conv1D` (audio frames);
    layer names start with `name`."""
    x = conv(hidden_dim, 3, padding="same", name=f"{name}conv_in")(inputs)
    for i in (1, 2):
        y = keras.layers.ReLU(name=f"{name}residual{i}_relu_a")(x)
        y = conv(hidden_dim, 3, padding="same", name=f"{name}residual{i}_conv_a")(y)
        y = keras.layers.ReLU(name=f"{name}residual{i}_relu_b")(y)
        # no bias: Grappler's remapper fails (an error line every trace) fusing a 1x1 conv with
        # its bias into the Add and ReLU that follow
        y = conv(hidden_dim, 1, use_bias=False, name=f"{name}residual{i}_conv_b")(y)
        x = keras.layers.Add(name=f"{name}residual{i}")([x, y])
    return keras.layers.ReLU(name=f"{name}relu")(x)


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
    x = residual_stack(codes, hidden_dim, keras.layers.Conv2D)
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
class VQVAE(Codebook, MethodModel):
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

    The codebook, its EMA updates (`codebook_ema`), dead-code restarts
    (`dead_code_steps`) and their handling across replicas are `Codebook`'s
    (`keras_ssl.models.codebook`, shared with the audio VQ-VAE); see its docstring
    for the formulas.

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

        if decoder_hidden_dim < 1:
            raise UserError(f"decoder_hidden_dim must be >= 1, got {decoder_hidden_dim!r}")
        self.init_codebook(codebook_size, code_dim, commitment_cost, codebook_ema, codebook_ema_decay,
                           dead_code_steps, seed)
        self.encoder = encoder
        shape = tuple(image_shape) if image_shape is not None else tuple(encoder.input_shape[1:])
        if len(shape) != 3 or None in shape:
            raise UserError(f"VQVAE needs the image shape (H, W, C) its decoder gives, got {shape}; pass "
                            "image_shape= for an encoder of any image size")
        self.image_shape = tuple(int(d) for d in shape)
        self.decoder_hidden_dim = int(decoder_hidden_dim)
        # the encoder's grid before its pooling, sharing its layers: kept out of Keras's tracking,
        # so that the encoder's weights are saved once (as `encoder`)
        object.__setattr__(self, "_grid_encoder", with_unpooled(encoder))
        grid = self._grid_encoder(tf.zeros([1, *self.image_shape]))["unpooled"]
        self.grid_shape = (int(grid.shape[1]), int(grid.shape[2]))
        self.pre_quantizer = pre_quantizer if pre_quantizer is not None else keras.Sequential(
            [keras.Input((None, None, int(grid.shape[-1]))), keras.layers.Conv2D(self.code_dim, 1, name="to_code")],
            name="pre_quantizer")
        self.decoder = decoder if decoder is not None else vqvae_decoder(
            self.grid_shape, self.code_dim, self.image_shape, self.decoder_hidden_dim)
        self.build_codebook()
        self.build()

    # -- the parts ------------------------------------------------------------

    def encode_grid(self, images, training=False):
        """`z_e`: float32 `[B, h, w, code_dim]` of images (uint8 or float in [0, 1])."""
        grid = self._grid_encoder(self.input_modality().as_model_input(images), training=training)["unpooled"]
        return tf.cast(self.pre_quantizer(grid, training=training), tf.float32)

    def quantize_grid(self, z):
        """`(quantized, codes, codebook_loss, commitment_loss)` of `z` (`Codebook.quantize_vectors`)."""
        return self.quantize_vectors(z)

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
        return self.lookup_codes(self.code_grid(codes))

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
        weight = tf.cast(n_local, tf.float32)
        quantisation = self.codebook_step(z, codes, codebook_loss, commitment_loss, weight, training)
        loss = tf.reduce_sum(nll) / (dims * n_global) + share * quantisation
        for name, value in (("loss", tf.reduce_mean(nll) / dims + quantisation),
                            ("reconstruction", tf.reduce_mean(nll))):
            self.trackers[name].update_state(value, sample_weight=weight)
        return loss

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
