"""Masked autoencoder (`--method=mae`; He et al. 2022, "Masked Autoencoders Are Scalable
Vision Learners"): a ViT-style patch encoder (`keras_ssl.image_transformers.vit_encoder`)
sees a random 25% of an image's patches, a light Transformer decoder predicts the pixels
of the other 75% from the encoded visible patches and mask tokens, and the loss is the
squared error on the masked patches only.

    keras-ssl-train --flagfile=flags/mae_fashion_mnist.cfg
    keras-ssl-evaluate --model_dir=runs/mae_fashion_mnist     # probes per block, masked reconstructions
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.evaluation.layer_probes import LAYER_PROBES
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.image_transformers import (LAYER_NORM_EPSILON, TRANSFORMER_HEADS, heads_option, layers_option,
                                          patchify, scaled_width, sincos_2d, transformer_blocks, unpatchify,
                                          vit_encoder, width_option)
from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput
from keras_ssl.models.global_batch import rows_of_this_replica, split_data
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.models.vae import to_uint8
from keras_ssl.text_encoders import TransformerBlock

# Per-patch normalisation of the target (norm_pix_loss): MAE's code adds 1e-6 to the variance.
NORM_PIX_EPSILON = 1e-6
# Grey value shown for a masked patch in the served `masked` images and the evaluation's PNG.
MASKED_GREY = 0.5


@dataclasses.dataclass
class MAEOptions:
    """MAE's hyper-parameters. Sources: mask ratio 0.75 (He et al. 2022, sec. 4.1, fig. 5:
    75% is best for fine-tuning and linear probing); the target is the raw pixels unless
    `norm_pix_loss` (sec. 3 "Reconstruction target", table 1d: per-patch normalised pixels
    improve the representation; their code's default for pre-training is on, ours off so
    that the reconstructions are pixels). Ours, for 28 px images on a CPU: 4 x 4 patches
    (a 7 x 7 grid, as ViT's 16 x 16 patches cut 224 px images into 14 x 14), a 4-block
    encoder of width 128 (ViT-B: 12 blocks of 768) and a 2-block decoder of width 64 (the
    paper's default: 8 blocks of 512; a narrower and shallower decoder is their "light"
    decoder, table 1a-b)."""

    patch_size: int = option(4, "side of the square patches (pixels; must divide the image size)",
                             check=lambda v: v >= 1, requirement=">= 1")
    mask_ratio: float = option(0.75, "share of patches masked per image (He et al. 2022: 0.75)",
                               check=lambda v: 0 < v < 1, requirement="in (0, 1)")
    norm_pix_loss: bool = option(False, "the target is each patch's pixels normalised by its own mean and "
                                 "standard deviation (He et al. 2022, table 1d)")
    transformer_layers: int = layers_option()
    transformer_width: int = width_option()
    transformer_heads: int = heads_option()
    decoder_layers: int = option(2, "Transformer blocks of MAE's decoder (ours; He et al. 2022: 8)",
                                 check=lambda v: v >= 1, requirement=">= 1")
    decoder_width: int = option(64, "width of MAE's decoder (ours; He et al. 2022: 512)",
                                check=lambda v: v >= 4, requirement=">= 4")


def visible_count(num_patches, mask_ratio):
    """Patches kept per image: int(N (1 - mask_ratio)) (MAE's `random_masking`), at least one."""
    return max(1, int(num_patches * (1.0 - float(mask_ratio))))


def random_masking(noise, keep):
    """MAE's per-image random masking from `noise` `[B, N]`: the `keep` patches of
    least noise are visible. Returns `(visible [B, keep] int32, restore [B, N] int32,
    mask [B, N] float32)`: the visible patches' indices (in order of noise), the
    permutation that puts `[visible, masked]` back in raster order, and 1 for a
    masked patch, 0 for a visible one."""
    shuffle = tf.argsort(noise, axis=1, stable=True)
    restore = tf.argsort(shuffle, axis=1, stable=True)
    return shuffle[:, :keep], restore, tf.cast(restore >= keep, tf.float32)


@keras.saving.register_keras_serializable(package="keras_ssl")
class MaskTokens(keras.layers.Layer):
    """`(visible tokens [B, k, D], restore [B, N])` -> `[B, N, D]`: the visible tokens and
    N - k copies of a learned mask token, put back in raster order, plus the fixed
    `sincos_2d` position code of the `grid` (MAE's decoder input)."""

    def __init__(self, grid, width, **kwargs):
        super().__init__(**kwargs)
        self.grid, self.width = tuple(int(g) for g in grid), int(width)
        self.positions = sincos_2d(*self.grid, self.width)

    def build(self, input_shape):
        self.mask_token = self.add_weight(name="mask_token", shape=(self.width,),
                                          initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.built = True

    def call(self, visible, restore):
        batch, kept = tf.shape(visible)[0], tf.shape(visible)[1]
        n = self.grid[0] * self.grid[1]
        masked = tf.broadcast_to(tf.cast(self.mask_token, visible.dtype)[None, None], tf.stack([batch, n - kept,
                                                                                               self.width]))
        tokens = tf.gather(tf.concat([visible, masked], axis=1), restore, batch_dims=1)
        return tokens + tf.cast(self.positions, tokens.dtype)[None]

    def compute_output_shape(self, visible_shape, restore_shape=None):
        return (visible_shape[0], self.grid[0] * self.grid[1], self.width)

    def get_config(self):
        config = super().get_config()
        config.update(grid=self.grid, width=self.width)
        return config


def mae_decoder(grid, encoder_width, patch_pixels, width=MAEOptions.decoder_width, layers=MAEOptions.decoder_layers,
                heads=TRANSFORMER_HEADS, name="decoder"):
    """MAE's decoder: the encoded visible tokens `[B, k, D_enc]` and `restore` `[B, N]` ->
    a Dense layer to `width` -> `MaskTokens` (mask tokens, raster order, positions) ->
    `layers` pre-LN Transformer blocks -> LayerNorm -> a Dense layer to each patch's
    `patch_pixels` values (float32) `[B, N, p*p*C]`."""
    visible = keras.Input((None, int(encoder_width)), name="visible")
    restore = keras.Input((grid[0] * grid[1],), dtype="int32", name="restore")
    x = keras.layers.Dense(width, name="embed")(visible)
    x = MaskTokens(grid, width, name="mask_tokens")(x, restore)
    for i in range(int(layers)):
        x = TransformerBlock(width, heads, dropout=0.0, name=f"decoder_block{i + 1}")(x)
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="decoder_norm")(x)
    pixels = keras.layers.Dense(int(patch_pixels), dtype="float32", name="pixels")(x)
    return keras.Model([visible, restore], pixels, name=name)


def patch_targets(patches, norm_pix_loss):
    """The regression target of each patch `[B, N, P]`: its pixels in [0, 1], or with
    `norm_pix_loss` (x - mean) / sqrt(var + 1e-6) over the patch's own P values."""
    if not norm_pix_loss:
        return patches
    mean, variance = tf.nn.moments(patches, axes=[-1], keepdims=True)
    return (patches - mean) / tf.sqrt(variance + NORM_PIX_EPSILON)


@keras.saving.register_keras_serializable(package="keras_ssl")
class MAE(MethodModel):
    """Masked autoencoder (He et al. 2022) of images.

    Per image: its N patches (`patch_size`, raster order) are shuffled by uniform noise and
    the k = int(N (1 - mask_ratio)) of least noise stay visible (`random_masking`); the
    `encoder` (a `vit_encoder`: patch embedding with positions, Transformer blocks, final
    LayerNorm) runs on those k tokens only; the `decoder` (`mae_decoder`) gets them with
    N - k mask tokens and predicts every patch's pixels. The loss per image is the mean
    squared error over the masked patches only, the error of a patch the mean over its
    p*p*C values (He et al. 2022, sec. 3 "Reconstruction target"):

        L(x) = sum_n m_n mean_j (pred_nj - target_nj)^2 / sum_n m_n

    (m_n = 1 for a masked patch; target: the pixels in [0, 1], or with `norm_pix_loss`
    each patch normalised by its own mean and variance, `patch_targets`). Each replica
    returns `sum(its L) / N_global` (every image masks as many patches, so this is MAE's
    mean over the masked patches of the global batch). The noise is drawn for the global
    batch with `tf.random.stateless_uniform` seeded by `(seed, step)`, each replica taking
    its rows: one device and R replicas mask alike. Metric: `loss`.

    The representation (what `predict`, the probes and `serving_default` give) is the
    mean of the encoder's patch tokens with every patch visible (MAE's linear probe, their
    appendix A.1). `fit()` takes image batches (uint8 or floats in [0, 1]); labels are
    refused. Serves `reconstruct(images, seeds)` -> uint8 `images` (the visible patches as
    given, the masked ones predicted) and `masked` (the input with its masked patches
    grey), the mask drawn from each seed (`seed_mask`).
    """

    SUB_MODELS = ("encoder", "decoder")
    TRACKED = ("loss",)

    def __init__(self, encoder, patch_size=MAEOptions.patch_size, mask_ratio=MAEOptions.mask_ratio,
                 norm_pix_loss=MAEOptions.norm_pix_loss, decoder_layers=MAEOptions.decoder_layers,
                 decoder_width=MAEOptions.decoder_width, seed=0, decoder=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 < float(mask_ratio) < 1:
            raise UserError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = encoder
        patches = encoder.get_layer("patches")
        self.patch_size, self.mask_ratio = int(patch_size), float(mask_ratio)
        if patches.patch_size != self.patch_size:
            raise UserError(f"the encoder cuts {patches.patch_size}-px patches, patch_size is {self.patch_size}")
        self.norm_pix_loss = bool(norm_pix_loss)
        self.decoder_layers, self.decoder_width = int(decoder_layers), int(decoder_width)
        self.seed = int(seed)
        self.image_shape = tuple(int(d) for d in encoder.input_shape[1:])
        self.grid = tuple(patches.grid)
        self.num_patches = self.grid[0] * self.grid[1]
        self.keep = visible_count(self.num_patches, self.mask_ratio)
        self.patch_pixels = self.patch_size ** 2 * self.image_shape[-1]
        heads = transformer_blocks(encoder)[0].heads
        self.decoder = decoder if decoder is not None else mae_decoder(
            self.grid, patches.width, self.patch_pixels, scaled_width(self.decoder_width, heads), self.decoder_layers,
            heads)
        self.build()

    # -- the masked autoencoder ----------------------------------------------------

    def encode_visible(self, images, visible, training=False):
        """The encoder on the `visible` patches `[B, k]` of float `images` only: `[B, k, D]`."""
        tokens = tf.gather(self.encoder.get_layer("patches")(images), visible, batch_dims=1)
        for block in transformer_blocks(self.encoder):
            tokens = block(tokens, training=training)
        return self.encoder.get_layer("sequence")(tokens)

    def predict_patches(self, images, noise, training=False):
        """`(predicted patches [B, N, P] float32, mask [B, N])` of float `images` masked by `noise`."""
        visible, restore, mask = random_masking(noise, self.keep)
        latent = self.encode_visible(images, visible, training)
        return tf.cast(self.decoder([latent, restore], training=training), tf.float32), mask

    def masked_losses(self, images, noise, training=False):
        """L(x) per image, float32 `[B]` (see the class docstring)."""
        predicted, mask = self.predict_patches(images, noise, training)
        target = patch_targets(patchify(tf.cast(images, tf.float32), self.patch_size), self.norm_pix_loss)
        per_patch = tf.reduce_mean(tf.square(predicted - target), axis=-1)
        return tf.reduce_sum(per_patch * mask, axis=1) / tf.reduce_sum(mask, axis=1)

    def _training_noise(self, n_local):
        n_global, first = rows_of_this_replica(n_local)
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int64)
        noise = tf.random.stateless_uniform([n_global, self.num_patches],
                                            tf.stack([tf.constant(self.seed, tf.int64), step]))
        return noise[first:first + n_local], n_global

    def method_loss(self, data, training):
        x, y = split_data(data)
        self.refuse_labels_without_probe(y, "learns without labels")
        images = self.input_modality().as_model_input(self.checked_inputs(x))
        n_local = tf.shape(images)[0]
        noise, n_global = self._training_noise(n_local)
        losses = self.masked_losses(images, noise, training)
        self.trackers["loss"].update_state(tf.reduce_mean(losses), sample_weight=tf.cast(n_local, tf.float32))
        return tf.reduce_sum(losses) / tf.cast(n_global, tf.float32)

    # -- reconstructions -------------------------------------------------------------

    def seed_noise(self, seeds):
        """The masking noise `[B, N]` of each seed (`stateless_uniform` seeded by `(seed, 0)`)."""
        seeds = tf.cast(tf.reshape(seeds, [-1]), tf.int32)
        return tf.map_fn(lambda s: tf.random.stateless_uniform([self.num_patches], tf.stack([s, 0])), seeds,
                         fn_output_signature=tf.float32)

    def reconstruct_masked(self, images, seeds):
        """`(reconstructions, masked inputs, mask [B, N])` of `images` (uint8 or float), the
        mask drawn from `seeds`: float32 images in [0, 1] with the visible patches as given
        and the masked ones predicted (with `norm_pix_loss` the prediction is mapped back
        with the true patch's mean and variance, as MAE's figures do), and the input with
        its masked patches grey."""
        images = tf.cast(self.input_modality().as_model_input(tf.convert_to_tensor(images)), tf.float32)
        predicted, mask = self.predict_patches(images, self.seed_noise(seeds))
        patches = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, variance = tf.nn.moments(patches, axes=[-1], keepdims=True)
            predicted = predicted * tf.sqrt(variance + NORM_PIX_EPSILON) + mean
        m = mask[..., None]
        combined = unpatchify(m * predicted + (1.0 - m) * patches, self.image_shape, self.patch_size)
        masked = unpatchify(m * MASKED_GREY + (1.0 - m) * patches, self.image_shape, self.patch_size)
        return tf.clip_by_value(combined, 0.0, 1.0), masked, mask

    def serving_endpoints(self, image_shape, threshold=None):
        """The embedding signatures (mean patch token, every patch visible) and `reconstruct`
        (images, seeds -> uint8 `images` and `masked`)."""
        shape = self.image_shape

        def reconstruct(images, seeds):
            combined, masked, _ = self.reconstruct_masked(images, seeds)
            return {"images": to_uint8(combined), "masked": to_uint8(masked)}

        return super().serving_endpoints(image_shape, threshold) + [
            Endpoint("reconstruct", (ServingInput("images"), ServingInput("seeds", "seeds")),
                     (ServingOutput("images", "uint8", shape, "visible patches as given, masked patches predicted"),
                      ServingOutput("masked", "uint8", shape, "the input with its masked patches grey (128)")),
                     reconstruct),
        ]


# -- its evaluation -----------------------------------------------------------------------


def masked_reconstruction_metrics(model, images, path=None, shown=12, limit=1000, batch_size=250):
    """`masked_mse`: the squared error on [0, 1] intensities of the masked patches'
    reconstructions (`reconstruct_masked`, seeds 0..n-1) over the first `limit` test
    images; with `path`, `masked_reconstruction_plot`: a PNG of the first `shown` images
    (rows: the image, its masked input, the reconstruction)."""
    from keras_ssl.evaluation.generative import save_image_grid

    images = images[:limit]
    errors, first = [], None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        combined, masked, mask = model.reconstruct_masked(batch, np.arange(start, start + len(batch)))
        truth = batch.astype(np.float32) / 255.0
        pixels = np.asarray(patchify(tf.constant((np.asarray(combined) - truth) ** 2), model.patch_size))
        errors.append(np.sum(pixels.mean(-1) * np.asarray(mask), 1) / np.sum(np.asarray(mask), 1))
        if first is None:
            first = (np.asarray(to_uint8(masked))[:shown], np.asarray(to_uint8(combined))[:shown])
    result = {"masked_mse": float(np.mean(np.concatenate(errors)))}
    if path:
        rows = [images[:shown], first[0], first[1]]
        result["masked_reconstruction_plot"] = save_image_grid(
            rows, path, f"rows: test image, {model.mask_ratio:.0%} of patches masked (seed = index), reconstruction")
    return result


def _masked_reconstructions(context):
    path = os.path.join(context.model_dir, "masked_reconstructions.png") if context.model_dir else None
    return masked_reconstruction_metrics(context.model, context.dataset.test.images, path)


register_evaluation(LAYER_PROBES)
register_evaluation(Evaluation(
    "masked_reconstructions", "MAE: squared error of the masked patches' reconstructions, and their PNG",
    _masked_reconstructions, ("masked_mse",), ("masked_reconstruction_plot",), needs_labels=False))


def _build(run, options, encoder, dataset, stage=None):
    """MAE with its own `vit_encoder` at the dataset's image shape (the run's `--encoder`,
    a CNN, is not used: MAE's encoder must run on a subset of the patches)."""
    vit = vit_encoder(dataset.image_shape, options.patch_size, options.transformer_width, options.transformer_layers,
                      options.transformer_heads, run.width_multiplier)
    return MAE(vit, patch_size=options.patch_size, mask_ratio=options.mask_ratio, norm_pix_loss=options.norm_pix_loss,
               decoder_layers=options.decoder_layers, decoder_width=options.decoder_width, seed=run.seed)


def _training_data(run, options, split, stage=None):
    """Shuffled uint8 image batches: the masks are drawn in the step."""
    from keras_ssl.data.views import image_batches

    return TrainingData(image_batches(split, run.batch_size, seed=run.seed), epoch_steps(split, run.batch_size),
                        run.batch_size)


register(Method(
    name="mae", summary="masked autoencoder: a ViT sees 25% of the patches, predicts the rest (He et al. 2022)",
    options=MAEOptions, build=_build, training_data=_training_data,
    # AdamW, weight decay 0.05 and the linear scaling rule lr = base x batch / 256 with warmup: He et
    # al. 2022, table 8 (their beta2 0.95; here Keras's 0.999); their base 1.5e-4 is for 800-1600
    # epochs, ours 1e-3 for a few CPU epochs. Batch 256 is ours. No augmentation: MAE works with crops only and
    # even none (sec. 4.1, table 1f: 84.0% top-1 fine-tuned without any).
    run_defaults=dict(model_dir="runs/mae", optimizer="adamw", learning_rate=1e-3, lr_scaling="linear",
                      warmup_epochs=1.0, weight_decay=0.05, augment="none", batch_size=256),
    evaluations=("probe", "layer_probes", "masked_reconstructions"),
    smoke_options=dict(augment="none", batch_size=16, patch_size=4, transformer_layers=2, decoder_layers=1),
))
