"""Heads that sit on an encoder's features: projection MLPs and classifiers."""

import keras

from keras_ssl.encoders import BN_EPSILON, BN_MOMENTUM, resolve_sync_bn
from keras_ssl.layers import FusedBatchNormalization


def projection_head(input_dim, hidden_dim=None, output_dim=128, num_layers=2, sync_bn=None,
                    name="projection_head"):
    """SimCLR's projection MLP g(h) (Chen et al. 2020, Sec. 2.1).

    `num_layers - 1` hidden layers of Dense(no bias) -> BN -> ReLU with
    `hidden_dim` units (default: `input_dim`, as in the paper), then a
    Dense(`output_dim`, no bias) -> BN(no centre) output layer, as SimCLR's
    TF code (`proj_head`, `use_bn=True`). `output_dim=128` and
    `num_layers=2` are the paper's defaults; SimCLRv2 uses 3 layers.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    sync_bn = resolve_sync_bn(sync_bn)
    hidden_dim = hidden_dim or input_dim
    layers = [keras.Input(shape=(input_dim,))]
    for i in range(num_layers - 1):
        layers += [
            keras.layers.Dense(hidden_dim, use_bias=False, name=f"hidden{i + 1}"),
            FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                            synchronized=sync_bn, name=f"hidden{i + 1}_bn"),
            keras.layers.ReLU(name=f"hidden{i + 1}_relu"),
        ]
    layers += [
        keras.layers.Dense(output_dim, use_bias=False, name="output"),
        FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, center=False,
                                        synchronized=sync_bn, name="output_bn"),
    ]
    return keras.Sequential(layers, name=name)


def linear_classifier(input_dim, num_classes, name="linear_probe"):
    """A single Dense layer producing class logits (SimCLR's online probe)."""
    return keras.Sequential(
        [keras.Input(shape=(input_dim,)), keras.layers.Dense(num_classes, name="logits")],
        name=name,
    )


def mlp_classifier(input_dim, hidden_dim, num_classes, sync_bn=None, name="classifier_head"):
    """Dense(hidden, no bias) -> BN -> ReLU -> Dense(num_classes) logits; a
    single Dense layer when `hidden_dim` is 0. The pretext tasks' heads. BN is
    synchronised under more than one replica (as in the encoder), so the
    update does not depend on how the global batch is split."""
    layers = [keras.Input((input_dim,))]
    if hidden_dim:
        layers += [keras.layers.Dense(hidden_dim, use_bias=False, name="hidden"),
                   FusedBatchNormalization(synchronized=resolve_sync_bn(sync_bn), name="hidden_bn"),
                   keras.layers.ReLU(name="hidden_relu")]
    layers.append(keras.layers.Dense(num_classes, name="logits"))
    return keras.Sequential(layers, name=name)
