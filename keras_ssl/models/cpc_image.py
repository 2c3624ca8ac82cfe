"""Contrastive Predictive Coding on images (van den Oord et al. 2018, section 3.2;
Henaff et al. 2019): a grid of patches, each column a sequence running down the image."""

import dataclasses

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.models.global_batch import split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.predictive_coding import _PredictiveCoding, step_predictors
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register


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
    Defaults (`CPCImageOptions`'s, ours for 28-32 px images): 8 px patches every 4 px (a 6x6 grid
    on 28 px; Henaff et al. take 64 px patches every 32 px of 256 px crops,
    the same half overlap), K = 3 rows ahead, 256 negatives, a context of 128
    (on Fashion-MNIST, K = 2 with 64 negatives probed 84.79% after 2 epochs,
    K = 3 with 256 negatives 86.18% after 3, 86.67% after 5). With K = 3 the
    image needs at least 4 rows of patches: 20 px at the default patches.
    """

    def __init__(self, encoder, context=None, predictor=None, patch_size=CPCImageOptions.patch_size,
                 stride=CPCImageOptions.patch_stride, context_dim=CPCImageOptions.context_dim,
                 prediction_steps=CPCImageOptions.prediction_steps, num_negatives=CPCImageOptions.num_negatives,
                 seed=0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.latent_dim = int(encoder.output_shape[-1])
        self.patch_size, self.stride = int(patch_size), int(stride)
        self.context_dim, self.prediction_steps = int(context_dim), int(prediction_steps)
        self.num_negatives, self.seed = int(num_negatives), int(seed)
        self.context = context if context is not None else causal_grid_context(self.latent_dim, self.context_dim)
        self.predictor = predictor if predictor is not None else step_predictors(
            self.context_dim, self.latent_dim, self.prediction_steps)
        self.build()

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


def _build_image(run, options, encoder, dataset, stage=None):
    rows = grid_size(dataset.image_shape[0], options.patch_size, options.patch_stride)
    if rows <= options.prediction_steps:
        raise UserError(f"{dataset.image_shape[0]} px images give {rows} rows of patches, not more than "
                        f"prediction_steps={options.prediction_steps}; lower --patch_size or --prediction_steps")
    return ImageCPC(encoder, seed=run.seed, **option_arguments(options, ImageCPC, renamed={"patch_stride": "stride"}))


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
