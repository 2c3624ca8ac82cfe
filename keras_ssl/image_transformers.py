"""Transformers over images, for MAE (`keras_ssl.models.mae`) and image GPT
(`keras_ssl.models.igpt`). They live here, beside the CNNs of `keras_ssl.encoders`
and the text Transformer of `keras_ssl.text_encoders`, whose pre-LN
`TransformerBlock` both reuse (called without token ids: nothing is padding).
They are not `--encoder` choices: each belongs to its method (MAE's encoder must be
a patch Transformer that can run on a subset of its patches, iGPT's reads palette
indices), which builds it from its own options whatever `--encoder` says.

    vit = vit_encoder((28, 28, 1), patch_size=4)           # images -> [B, D], mean of the patch tokens
    gpt = pixel_transformer((14, 14, 1), levels=16)        # images -> [B, D], mean of the causal sequence

Both are functional Keras models with float images in [0, 1] as input, layers
`block1` ... `blockL` (the Transformer blocks, `[B, T, D]` each: the probe points of
`keras-ssl-evaluate --layers`, mean-pooled), `sequence` (the final LayerNorm) and
`features` (the mean over the sequence: the representation).

Sizes: 4 blocks of width 128 with 4 heads (MLP 4 x width, Vaswani et al. 2017) are
ours, sized for 2 CPU cores (ViT-B, MAE's smallest encoder: 12 blocks of 768 with 12
heads; iGPT-S: 24 blocks of 512); `width_multiplier` scales the width (kept a multiple
of 4 x heads so that the sine-cosine position code splits evenly).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.text_encoders import TokenAndPositionEmbedding, TransformerBlock

TRANSFORMER_LAYERS = 4
TRANSFORMER_WIDTH = 128
TRANSFORMER_HEADS = 4
LAYER_NORM_EPSILON = 1e-5  # as keras_ssl.text_encoders (MAE's code uses 1e-6)


def layers_option():
    """The `transformer_layers` option of the image Transformer methods (one flag for both)."""
    from keras_ssl.options import option

    return option(TRANSFORMER_LAYERS, "Transformer blocks of the image Transformer (mae's encoder, igpt; ours, "
                  "for CPU)", check=lambda v: v >= 1, requirement=">= 1")


def width_option():
    """The `transformer_width` option of the image Transformer methods."""
    from keras_ssl.options import option

    return option(TRANSFORMER_WIDTH, "width of the image Transformer (mae's encoder, igpt; times "
                  "--width_multiplier; ours, for CPU)", check=lambda v: v >= 4, requirement=">= 4")


def heads_option():
    """The `transformer_heads` option of the image Transformer methods."""
    from keras_ssl.options import option

    return option(TRANSFORMER_HEADS, "attention heads of the image Transformer's blocks (ours)",
                  check=lambda v: v >= 1, requirement=">= 1")


def scaled_width(width, heads, width_multiplier=1.0):
    """`width * width_multiplier` rounded to a multiple of `4 * heads` (at least that)."""
    unit = 4 * int(heads)
    return max(unit, int(round(int(width) * float(width_multiplier) / unit)) * unit)


def sincos_2d(grid_h, grid_w, dim):
    """The fixed 2-D sine-cosine position code of MAE (He et al. 2022, appendix A.1; its
    `get_2d_sincos_pos_embed`), float32 `[grid_h * grid_w, dim]` in raster order: half the
    dimensions code the row, half the column, each half `[sin(pos * w_i), cos(pos * w_i)]`
    with `w_i = 1 / 10000^(i / (dim / 4))`, i = 0 .. dim/4 - 1."""
    if dim % 4:
        raise UserError(f"the sine-cosine position code needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, columns = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                                indexing="ij")

    def code(positions):
        angles = positions.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([code(rows), code(columns)], axis=1).astype(np.float32)


def patchify(images, patch_size):
    """`[B, H, W, C]` -> `[B, (H/p)(W/p), p*p*C]`: non-overlapping p x p patches in raster
    order, each flattened row by row (MAE's `patchify`); H and W must be multiples of p."""
    p = int(patch_size)
    height, width, channels = (int(d) for d in images.shape[1:])
    if height % p or width % p:
        raise UserError(f"images of {height}x{width} px do not split into {p}x{p} patches; choose a --patch_size "
                        "that divides the --image_size")
    batch = tf.shape(images)[0]
    x = tf.reshape(images, [batch, height // p, p, width // p, p, channels])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [batch, (height // p) * (width // p), p * p * channels])


def unpatchify(patches, image_shape, patch_size):
    """`patchify`'s inverse: `[B, N, p*p*C]` -> `[B, H, W, C]`."""
    p = int(patch_size)
    height, width, channels = (int(d) for d in image_shape)
    batch = tf.shape(patches)[0]
    x = tf.reshape(patches, [batch, height // p, width // p, p, p, channels])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [batch, height, width, channels])


@keras.saving.register_keras_serializable(package="keras_ssl")
class PatchEmbedding(keras.layers.Layer):
    """Images `[B, H, W, C]` in [0, 1] -> patch tokens `[B, N, D]`: each p x p patch,
    mapped to [-1, 1], through one Dense layer (ViT's linear projection, Dosovitskiy et
    al. 2021, eq. 1: a stride-p convolution), plus the fixed `sincos_2d` position code
    (MAE's). N = (H/p)(W/p)."""

    def __init__(self, patch_size, width, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.width = int(patch_size), int(width)
        self.projection = keras.layers.Dense(self.width, name="projection")

    def build(self, input_shape):
        height, width, channels = (int(d) for d in input_shape[1:])
        p = self.patch_size
        if height % p or width % p:
            raise UserError(f"images of {height}x{width} px do not split into {p}x{p} patches; choose a "
                            "--patch_size that divides the --image_size")
        self.grid = (height // p, width // p)
        self.positions = sincos_2d(*self.grid, self.width)
        self.projection.build((None, None, p * p * channels))
        self.built = True

    def call(self, images):
        tokens = self.projection(patchify(images * 2.0 - 1.0, self.patch_size))
        return tokens + tf.cast(self.positions, tokens.dtype)[None]

    def compute_output_shape(self, input_shape):
        p = self.patch_size
        return (input_shape[0], (input_shape[1] // p) * (input_shape[2] // p), self.width)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, width=self.width)
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class PixelTokens(keras.layers.Layer):
    """Images `[B, H, W, 1]` in [0, 1] -> the model's input ids `[B, H*W]` (int32): each
    8-bit value v = round(255 x) becomes its palette index floor(v * levels / 256)
    (`levels` equal bins of the grey range: 16 levels = the 4 high bits), in raster order,
    shifted right by one behind a start token (id `levels`; Chen et al. 2020: position i
    is read with the pixels before it only)."""

    def __init__(self, levels, **kwargs):
        super().__init__(**kwargs)
        self.levels = int(levels)

    def call(self, images):
        return shifted_ids(palette_indices(images, self.levels), self.levels)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(levels=self.levels)
        return config


def palette_indices(images, levels):
    """int32 `[B, H*W]`: floor(round(255 x) * levels / 256) of float images `[B, H, W, 1]` in
    [0, 1] (uint8 images: of v), raster order."""
    if images.dtype == tf.uint8:
        values = tf.cast(images, tf.int32)
    else:
        values = tf.cast(tf.round(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 1.0) * 255.0), tf.int32)
    indices = values * int(levels) // 256
    return tf.reshape(indices, [tf.shape(images)[0], -1])


def shifted_ids(indices, levels):
    """`[start, i_0, ..., i_{T-2}]` of palette indices `[B, T]` (start = `levels`)."""
    start = tf.fill([tf.shape(indices)[0], 1], tf.constant(int(levels), indices.dtype))
    return tf.concat([start, indices[:, :-1]], axis=1)


def palette_intensities(indices, levels):
    """Float intensities in [0, 1] of palette indices: each bin's centre value,
    (i + 0.5) * 256 / levels - 0.5, over 255 (its palette index maps back to i)."""
    return (tf.cast(indices, tf.float32) + 0.5) * (256.0 / int(levels)) / 255.0 - 0.5 / 255.0


def vit_encoder(image_shape, patch_size, width=TRANSFORMER_WIDTH, layers=TRANSFORMER_LAYERS,
                heads=TRANSFORMER_HEADS, width_multiplier=1.0, name="vit"):
    """The ViT-style patch encoder (Dosovitskiy et al. 2021, without the class token: MAE's
    linear probe reads the mean of the patch tokens, He et al. 2022 appendix A.1): images
    `[B, H, W, C]` -> `PatchEmbedding` "patches" -> `layers` pre-LN `TransformerBlock`s
    "block1".. (no dropout, no causal mask) -> LayerNorm "sequence" -> their mean "features"."""
    width = scaled_width(width, heads, width_multiplier)
    images = keras.Input(tuple(int(d) for d in image_shape), name="images")
    x = PatchEmbedding(patch_size, width, name="patches")(images)
    for i in range(int(layers)):
        x = TransformerBlock(width, heads, dropout=0.0, name=f"block{i + 1}")(x)
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="sequence")(x)
    features = keras.layers.GlobalAveragePooling1D(name="features")(x)
    return keras.Model(images, features, name=name)


def pixel_transformer(image_shape, levels, width=TRANSFORMER_WIDTH, layers=TRANSFORMER_LAYERS,
                      heads=TRANSFORMER_HEADS, width_multiplier=1.0, name="pixel_transformer"):
    """iGPT's causal Transformer (Chen et al. 2020, a GPT-2 over pixels): grayscale images
    `[B, H, W, 1]` -> `PixelTokens` "pixel_tokens" (palette indices behind a start token)
    -> token and learned position embedding "embedding" (`levels + 1` ids, H*W positions;
    no dropout) -> `layers` causal `TransformerBlock`s "block1".. -> LayerNorm "sequence"
    -> the mean over the positions "features" (iGPT's probe: average pooling)."""
    height, width_px, channels = (int(d) for d in image_shape)
    if channels != 1:
        raise UserError(f"igpt models grayscale images (a palette of grey levels), got {channels} channels; "
                        "use --channels=1")
    width = scaled_width(width, heads, width_multiplier)
    images = keras.Input((height, width_px, 1), name="images")
    ids = PixelTokens(levels, name="pixel_tokens")(images)
    x = TokenAndPositionEmbedding(int(levels) + 1, height * width_px, width, dropout=0.0, name="embedding")(ids)
    for i in range(int(layers)):
        x = TransformerBlock(width, heads, dropout=0.0, causal=True, name=f"block{i + 1}")(x)
    x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="sequence")(x)
    features = keras.layers.GlobalAveragePooling1D(name="features")(x)
    return keras.Model(images, features, name=name)


def transformer_blocks(encoder):
    """The `TransformerBlock` layers of `encoder`, in order."""
    return [layer for layer in encoder.layers if isinstance(layer, TransformerBlock)]


def block_names(encoder):
    """Names of the encoder's Transformer blocks (the per-layer probe points)."""
    return [layer.name for layer in transformer_blocks(encoder)]
