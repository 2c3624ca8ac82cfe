"""Backbones (encoders): images in, a feature vector (the representation) out.

Every encoder is a functional `keras.Model` built from Keras's own layers and
`keras_ssl.layers.FusedBatchNormalization` (Keras's BatchNormalization with
TensorFlow's fused kernel in training, 1.3x faster steps on a 2-core
AVX2-only AMD EPYC); the `encoder.keras` a run writes holds Keras's own
BatchNormalization instead
(`keras_ssl.layers.with_keras_batch_norm`), so it loads without keras_ssl.
Conventions:

* input: float images in [0, 1], `[batch, H, W, C]`; the first layer
  (`normalize`) maps them to [-1, 1];
* each stage ends in a layer named `block1`, `block2`, ... so probes can read
  intermediate features by name (`keras_ssl.evaluation`);
* the output layer is `features` (global average pooling of the last stage).

BatchNormalization uses momentum 0.9 and epsilon 1e-5 (SimCLR's
`BATCH_NORM_DECAY`/`BATCH_NORM_EPSILON`); `sync_bn=None` turns synchronised BN
on exactly when the current strategy has more than one replica.
"""

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.layers import FusedBatchNormalization

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
ENCODERS = ("small_cnn", "resnet18", "resnet34", "resnet50")
AUDIO_ENCODERS = ("cpc_conv", "cpc_conv_plain", "log_mel_conv", "log_mel_conv_10ms")  # keras_ssl.audio_encoders


def resolve_sync_bn(sync_bn=None):
    """`sync_bn`, or True when the current strategy has more than one replica."""
    if sync_bn is None:
        return tf.distribute.get_strategy().num_replicas_in_sync > 1
    return bool(sync_bn)


def _bn(sync_bn, name, gamma_zero=False):
    return FusedBatchNormalization(
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        synchronized=sync_bn,
        gamma_initializer="zeros" if gamma_zero else "ones",
        name=name,
    )


def _conv_bn_relu(x, filters, kernel, stride, sync_bn, name):
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_conv",
    )(x)
    x = _bn(sync_bn, f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _check_input_shape(input_shape, min_side):
    """(H, W, C) with positive sizes; H and W may both be None (any size:
    the encoders are fully convolutional up to the global pooling)."""
    flexible = input_shape[:2] == (None, None) if len(input_shape) == 3 else False
    if len(input_shape) != 3 or input_shape[2] is None or any(
            s is not None and s <= 0 for s in input_shape) or (not flexible and None in input_shape):
        raise UserError(f"input_shape must be (height, width, channels), got {input_shape}")
    if not flexible and min(input_shape[:2]) < min_side:
        raise UserError(
            f"images of {input_shape[0]}x{input_shape[1]} px are too small for this "
            f"encoder (needs at least {min_side} px); resize them or pick another encoder"
        )


def small_cnn(input_shape=(28, 28, 1), width_multiplier=1.0, sync_bn=None, name="small_cnn"):
    """A VGG-style CNN for 28-32 px images (the demo encoder).

    Stage 1: one 3x3 conv-BN-ReLU with 32 channels at full resolution; stages
    2 and 3: 2x2 max-pool, then two 3x3 conv-BN-ReLU with 64 and 128 channels
    (all times `width_multiplier`); global average pooling:
    28x28 -> 14x14 -> 7x7 -> 128 features, about 45 MFLOPs per 28 px image.
    The widths are ours, sized so that SimCLR passes over Fashion-MNIST in
    minutes on 2 CPU cores (an epoch in 175-203 s on an AVX2-only AMD EPYC,
    about 50 s on a Xeon with AMX: the 10-minute demo trains one), where the
    training step runs at the CPU's matmul rate (docs/BENCHMARKS.md).
    """
    _check_input_shape(tuple(input_shape), 8)
    sync_bn = resolve_sync_bn(sync_bn)
    widths = [max(8, int(round(w * width_multiplier))) for w in (32, 64, 128)]
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="normalize")(inputs)
    for stage, filters in enumerate(widths, start=1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{stage}")(x)
        x = _conv_bn_relu(x, filters, 3, 1, sync_bn, f"stage{stage}_a")
        if stage > 1:
            x = _conv_bn_relu(x, filters, 3, 1, sync_bn, f"stage{stage}_b")
        x = keras.layers.Identity(name=f"block{stage}")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, outputs, name=name)


def _basic_block(x, filters, stride, sync_bn, name):
    shortcut = x
    y = _conv_bn_relu(x, filters, 3, stride, sync_bn, f"{name}_1")
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_2_conv")(y)
    y = _bn(sync_bn, f"{name}_2_bn", gamma_zero=True)(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                       kernel_initializer="he_normal", name=f"{name}_proj_conv")(x)
        shortcut = _bn(sync_bn, f"{name}_proj_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters, stride, sync_bn, name):
    shortcut = x
    out_filters = 4 * filters
    y = _conv_bn_relu(x, filters, 1, 1, sync_bn, f"{name}_1")
    y = _conv_bn_relu(y, filters, 3, stride, sync_bn, f"{name}_2")
    y = keras.layers.Conv2D(out_filters, 1, use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_3_conv")(y)
    y = _bn(sync_bn, f"{name}_3_bn", gamma_zero=True)(y)
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = keras.layers.Conv2D(out_filters, 1, strides=stride, use_bias=False,
                                       kernel_initializer="he_normal", name=f"{name}_proj_conv")(x)
        shortcut = _bn(sync_bn, f"{name}_proj_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


_RESNET_LAYOUT = {
    18: (_basic_block, (2, 2, 2, 2)),
    34: (_basic_block, (3, 4, 6, 3)),
    50: (_bottleneck_block, (3, 4, 6, 3)),
}


def resnet(depth=18, input_shape=(32, 32, 3), cifar_stem=True, width_multiplier=1.0,
           sync_bn=None, name=None):
    """ResNet-18/34/50 (He et al. 2016) with the CIFAR stem option.

    `cifar_stem=True` is SimCLR's CIFAR-10 variant (Appendix B.9): the 7x7
    stride-2 stem conv becomes a 3x3 stride-1 conv and the max-pool is
    removed. `width_multiplier` scales every stage width (64, 128, 256, 512),
    as SimCLR's ResNet-50 (2x, 4x). The last BN of each residual branch starts
    at zero (Goyal et al. 2017), as in SimCLR's code.
    """
    if depth not in _RESNET_LAYOUT:
        raise UserError(f"unknown ResNet depth {depth}; choose one of {sorted(_RESNET_LAYOUT)}")
    _check_input_shape(tuple(input_shape), 8 if cifar_stem else 32)
    sync_bn = resolve_sync_bn(sync_bn)
    block_fn, repeats = _RESNET_LAYOUT[depth]
    widths = [max(8, int(round(w * width_multiplier))) for w in (64, 128, 256, 512)]
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="normalize")(inputs)
    if cifar_stem:
        x = _conv_bn_relu(x, widths[0], 3, 1, sync_bn, "stem")
    else:
        x = _conv_bn_relu(x, widths[0], 7, 2, sync_bn, "stem")
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, (filters, n_blocks) in enumerate(zip(widths, repeats), start=1):
        for b in range(n_blocks):
            stride = 2 if (stage > 1 and b == 0) else 1
            x = block_fn(x, filters, stride, sync_bn, f"stage{stage}_block{b + 1}")
        x = keras.layers.Identity(name=f"block{stage}")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def build_encoder(name, input_shape, width_multiplier=1.0, cifar_stem=True, sync_bn=None):
    """An encoder by name: one of `ENCODERS`."""
    if name == "small_cnn":
        return small_cnn(input_shape, width_multiplier, sync_bn)
    if name.startswith("resnet") and name[6:].isdigit():
        return resnet(int(name[6:]), input_shape, cifar_stem, width_multiplier, sync_bn)
    raise UserError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


_POOLING = ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
            "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D")
_GLOBAL_POOLING = ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D")


def _downsamples(layer):
    """True for a pooling layer or a strided convolution: where a stage of an encoder ends."""
    strides = getattr(layer, "strides", None) or (1,)
    return type(layer).__name__ in _POOLING or any(int(s) > 1 for s in strides)


def feature_layer_names(encoder):
    """Names of the encoder's probe points: the end of every stage (a layer whose output
    a pooling layer or a strided convolution reads, and that every path from the input
    to the output goes through: not a layer inside a residual block, which the
    shortcut bypasses, as the strided 3x3 of a ResNet-50 bottleneck reads), then the
    output layer. Found from the graph, not from layer names (keras_ssl's encoders call
    their stage ends `blockN` and their output `features`, but any functional encoder
    works)."""
    output = encoder.layers[-1]
    names, computed = [], False  # before the first layer with weights there is only the (normalised) input
    for layer in encoder.layers[:-1]:
        if type(layer).__name__ == "InputLayer":
            continue
        computed = computed or bool(layer.weights)
        readers = _readers(layer)
        if computed and any(_downsamples(reader) for reader in readers) and layer.name not in names \
                and _every_path_passes(encoder, layer):
            names.append(layer.name)
    return names + [output.name]


def _readers(layer):
    return [node.operation for node in getattr(layer, "_outbound_nodes", [])]


def _every_path_passes(encoder, through):
    """True when no path from the encoder's inputs to its output avoids `through`."""
    inputs = [layer for layer in encoder.layers if type(layer).__name__ == "InputLayer"]
    output, layers = encoder.layers[-1], set(id(layer) for layer in encoder.layers)
    seen, frontier = {id(through)}, [layer for layer in inputs if layer is not through]
    while frontier:
        layer = frontier.pop()
        if layer is output:
            return False
        for reader in _readers(layer):
            if id(reader) not in seen and id(reader) in layers:
                seen.add(id(reader))
                frontier.append(reader)
    return True


def with_unpooled(encoder):
    """A model of the encoder's inputs giving `{"unpooled": ..., "pooled": ...}`: the grid
    `[B, h, w, C]` (or sequence `[B, T, C]`) before the encoder's global pooling, and the
    pooled representation. An encoder whose output is already a sequence or grid (the
    audio encoders' frames) gives it as `unpooled` and its mean over time or space as
    `pooled`. Layers are shared: the model trains the encoder's weights."""
    last = encoder.layers[-1]
    if type(last).__name__ in _GLOBAL_POOLING:
        unpooled, pooled = last.input, encoder.output
    else:
        unpooled = encoder.output
        pool = keras.layers.GlobalAveragePooling1D if len(unpooled.shape) == 3 else keras.layers.GlobalAveragePooling2D
        pooled = pool(name=f"{encoder.name}_pooled")(unpooled) if len(unpooled.shape) in (3, 4) else unpooled
    inputs = encoder.inputs[0] if len(encoder.inputs) == 1 else encoder.inputs
    return keras.Model(inputs, {"unpooled": unpooled, "pooled": pooled}, name=f"{encoder.name}_unpooled")


def __getattr__(name):
    if name == "ENCODERS_BY_MODALITY":  # deprecated: keras_ssl.modalities.get(name).encoders
        from keras_ssl import modalities

        return {m: modalities.get(m).encoders for m in modalities.names()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
