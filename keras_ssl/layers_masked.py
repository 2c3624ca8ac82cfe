"""Masked convolutions of an autoregressive model over a grid (PixelCNN, van den Oord
et al. 2016, "Pixel Recurrent Neural Networks" sec. 3.5, and the gated PixelCNN of
"Conditional Image Generation with PixelCNN Decoders", sec. 2.1-2.2).

Positions are ordered row-major: (i, j) comes before (i', j') when i < i', or i == i'
and j < j'. A gated PixelCNN has two stacks, which together see every earlier position
and nothing else (no blind spot):

* the vertical stack, `MaskedConv2D(stack="vertical")`: a k x k kernel keeping its
  rows up to the centre row (the rows above, and with mask type B the centre row);
  type A (the first layer) keeps only the rows above, so every vertical feature of
  row i depends on rows < i only;
* the horizontal stack, `MaskedConv2D(stack="horizontal")`: a 1 x k kernel keeping
  its columns up to the centre (type A: those left of it, so the first layer never
  sees the position itself; type B after: the position's own features, which hold
  only earlier positions).

The horizontal stack takes the vertical stack's features of the same position (a
1x1 convolution), which see only rows above: this is the formulation of Lippe's
UvA deep-learning tutorial 12 (masking the vertical stack's centre row in its first
layer instead of the paper's down-shift; equivalent receptive field).
"""

import keras
import numpy as np

STACKS = ("vertical", "horizontal")
MASK_TYPES = ("A", "B")


def causal_mask(kernel_size, stack, mask_type):
    """The 0/1 mask `[kh, kw]` of a kernel of `kernel_size` (odd sizes, centred)."""
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"a masked convolution needs an odd kernel size, got {kernel_size}")
    if stack not in STACKS or mask_type not in MASK_TYPES:
        raise ValueError(f"stack must be one of {STACKS} and mask_type one of {MASK_TYPES}, got {stack!r}, "
                         f"{mask_type!r}")
    mask = np.zeros((kh, kw), np.float32)
    if stack == "vertical":  # the rows above the centre, and with type B the centre row
        mask[:kh // 2 + (mask_type == "B"), :] = 1.0
    else:  # one row: the columns left of the centre, and with type B the centre
        if kh != 1:
            raise ValueError(f"a horizontal-stack kernel is one row, got {kernel_size}")
        mask[:, :kw // 2 + (mask_type == "B")] = 1.0
    return mask


@keras.saving.register_keras_serializable(package="keras_ssl")
class MaskedConv2D(keras.layers.Conv2D):
    """A "same"-padded, stride-1 `Conv2D` whose kernel is multiplied by `causal_mask`
    (the masked weights get no gradient and never act): `stack` "vertical" (k x k)
    or "horizontal" (1 x k), `mask_type` "A" (the centre masked: the first layer)
    or "B" (later layers)."""

    def __init__(self, filters, kernel_size, stack="vertical", mask_type="B", **kwargs):
        kwargs.update(padding="same", strides=1)
        super().__init__(filters, kernel_size, **kwargs)
        self.stack, self.mask_type = str(stack), str(mask_type)
        self._mask = causal_mask(self.kernel_size, self.stack, self.mask_type)[:, :, None, None]

    def convolution_op(self, inputs, kernel):
        mask = keras.ops.convert_to_tensor(self._mask, dtype=kernel.dtype)
        return super().convolution_op(inputs, kernel * mask)

    def get_config(self):
        config = super().get_config()
        config.update(stack=self.stack, mask_type=self.mask_type)
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class GatedActivation(keras.layers.Layer):
    """`tanh(a) * sigmoid(b)` of the two halves `[a, b]` of the last axis (van den Oord
    et al. 2016, eq. 2: y = tanh(W_f * x) . sigmoid(W_g * x))."""

    def call(self, x):
        a, b = keras.ops.split(x, 2, axis=-1)
        return keras.ops.tanh(a) * keras.ops.sigmoid(b)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], None if input_shape[-1] is None else input_shape[-1] // 2)
