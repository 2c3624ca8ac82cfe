"""A small Transformer encoder over token ids, for the text modality's methods: GPT
(causal) and BERT (bidirectional) alike.

    encoder = build_text_encoder("transformer_small", vocabulary_size=4096, sequence_length=128)
    encoder(ids)                      # [B, D]: the mean of the non-padding positions
    encode_sequence(encoder, ids)     # [B, T, D]: the sequence before pooling, the same weights
    set_causal(encoder, True)         # every block attends only to earlier positions (GPT)
    set_dropout(encoder, 0.0)         # another dropout rate (a method's option)

Token ids `[B, T]` (int, `PAD_ID` = 0 is padding) -> token embedding + learned position
embedding (GPT-2's, Radford et al. 2019) -> `layers` pre-LN blocks (x + MHA(LN(x)),
x + MLP(LN(x)), GPT-2 / Xiong et al. 2020: trains without a warmup-critical LN
position) -> a final LayerNorm: the sequence `[B, T, D]`. Padding positions are
masked as keys in every attention (a query attends to non-padding keys, and with
`causal` to keys at or before it), and the pooled embedding is the mean over the
non-padding positions (zeros for a row that is all padding).

`transformer_small`: 4 layers, width 256, 4 heads, MLP 1024 (4 x width, Vaswani et al.
2017), dropout 0.1 (GPT-2's): about 3.2M parameters besides the token embedding
(4096 x 256 = 1M), sized for a 2-core CPU; `width_multiplier` scales the width (heads
stay 4, the MLP stays 4 x width). The blocks are Keras's own `MultiHeadAttention`,
`LayerNormalization` and `Dense` inside three small layers registered with Keras
(`keras_ssl>...`): `encoder.keras` loads after `import keras_ssl`.
"""

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.tokenizers import PAD_ID

TEXT_ENCODERS = ("transformer_small",)
# name -> (layers, width, heads): transformer_small is sized for 2 CPU cores (see the docstring)
_SIZES = {"transformer_small": (4, 256, 4)}
DROPOUT = 0.1  # GPT-2's residual, attention and embedding dropout


@keras.saving.register_keras_serializable(package="keras_ssl")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """ids `[B, T]` -> token vector + learned position vector `[B, T, D]` (T <= `sequence_length`)."""

    def __init__(self, vocabulary_size, sequence_length, width, dropout=DROPOUT, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.sequence_length, self.width = int(vocabulary_size), int(sequence_length), int(width)
        self.dropout = float(dropout)
        policy = self.dtype_policy  # the sub-layers compute as the layer does (a model loaded under another policy)
        self.tokens = keras.layers.Embedding(self.vocabulary_size, self.width, name="token_embedding", dtype=policy,
                                             embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.positions = keras.layers.Embedding(self.sequence_length, self.width, name="position_embedding",
                                                dtype=policy,
                                                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01))
        self.drop = keras.layers.Dropout(self.dropout, dtype=policy)

    def build(self, input_shape):
        self.tokens.build(input_shape)
        self.positions.build((self.sequence_length,))
        self.built = True

    def call(self, ids, training=False):
        length = tf.shape(ids)[1]
        x = self.tokens(ids) + self.positions(tf.range(length))[None]
        return self.drop(x, training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.width)

    def get_config(self):
        config = super().get_config()
        config.update(vocabulary_size=self.vocabulary_size, sequence_length=self.sequence_length, width=self.width,
                      dropout=self.dropout)
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class TransformerBlock(keras.layers.Layer):
    """`(x [B, T, D], ids [B, T])` -> x: x + MHA(LN(x)), then x + MLP(LN(x)) (pre-LN),
    padding keys masked, and later keys too when `causal`. Without `ids` (`block(x)`)
    nothing is padding: the image Transformers (`keras_ssl.image_transformers`) use it so."""

    def __init__(self, width, heads, mlp_width=None, dropout=DROPOUT, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.width, self.heads = int(width), int(heads)
        self.mlp_width = int(mlp_width or 4 * width)
        self.dropout, self.causal = float(dropout), bool(causal)
        if self.width % self.heads:
            raise UserError(f"the width {self.width} must be a multiple of the {self.heads} heads")
        policy = self.dtype_policy  # the sub-layers compute as the block does (a model loaded under another policy)
        self.norm_1 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm_1", dtype=policy)
        self.attention = keras.layers.MultiHeadAttention(self.heads, self.width // self.heads, dropout=self.dropout,
                                                         name="attention", dtype=policy)
        self.norm_2 = keras.layers.LayerNormalization(epsilon=1e-5, name="norm_2", dtype=policy)
        self.mlp_in = keras.layers.Dense(self.mlp_width, activation="gelu", name="mlp_in", dtype=policy)
        self.mlp_out = keras.layers.Dense(self.width, name="mlp_out", dtype=policy)
        self.drop = keras.layers.Dropout(self.dropout, dtype=policy)

    def build(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)) \
            else input_shape
        shape = tuple(shape)
        self.norm_1.build(shape)
        self.attention.build(shape, shape)
        self.norm_2.build(shape)
        self.mlp_in.build(shape)
        self.mlp_out.build((*shape[:-1], self.mlp_width))
        self.built = True

    def call(self, x, ids=None, training=False):
        """`ids` None: no padding (every position is a key; images' patches and pixels)."""
        if ids is None:
            batch, length = tf.shape(x)[0], tf.shape(x)[1]
            mask = tf.ones(tf.stack([batch, length, length]), tf.bool) if self.causal else None
        else:
            keys = ids != PAD_ID  # [B, T]
            mask = tf.logical_and(keys[:, None, :], tf.ones_like(keys)[:, :, None])  # [B, T query, T key]
            length = tf.shape(ids)[1]
        if self.causal:
            mask = tf.logical_and(mask, tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)[None])
        h = self.norm_1(x)
        x = x + self.drop(self.attention(h, h, attention_mask=mask, training=training), training=training)
        h = self.mlp_out(self.mlp_in(self.norm_2(x)))
        return x + self.drop(h, training=training)

    def compute_output_shape(self, x_shape, ids_shape=None):
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, heads=self.heads, mlp_width=self.mlp_width, dropout=self.dropout,
                      causal=self.causal)
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class MaskedMeanPool(keras.layers.Layer):
    """`(sequence [B, T, D], ids [B, T])` -> `[B, D]`: the mean over non-padding positions."""

    def call(self, sequence, ids):
        keep = tf.cast(ids != PAD_ID, sequence.dtype)[..., None]
        return tf.reduce_sum(sequence * keep, axis=1) / tf.maximum(tf.reduce_sum(keep, axis=1), 1.0)

    def compute_output_shape(self, sequence_shape, ids_shape=None):
        return (sequence_shape[0], sequence_shape[-1])


def build_text_encoder(name, vocabulary_size, sequence_length, width_multiplier=1.0, causal=False):
    """The functional encoder `name` (`TEXT_ENCODERS`): int ids `[B, T]` (T <=
    `sequence_length`) -> pooled `[B, D]`; its layer "sequence" gives `[B, T, D]`."""
    if name not in _SIZES:
        raise UserError(f"text encoder must be one of {', '.join(TEXT_ENCODERS)}, got {name!r}")
    layers, width, heads = _SIZES[name]
    width = max(heads * 4, int(round(width * width_multiplier / heads)) * heads)
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = TokenAndPositionEmbedding(vocabulary_size, sequence_length, width, name="embedding")(ids)
    for i in range(layers):
        x = TransformerBlock(width, heads, causal=causal, name=f"block{i + 1}")(x, ids)
    sequence = keras.layers.LayerNormalization(epsilon=1e-5, name="sequence")(x)
    pooled = MaskedMeanPool(name="pooled")(sequence, ids)
    return keras.Model(ids, pooled, name=name)


def encode_sequence(encoder, ids, training=False):
    """The sequence `[B, T, D]` of `encoder` (its layers up to "sequence", before pooling)."""
    x = encoder.get_layer("embedding")(ids, training=training)
    for layer in encoder.layers:
        if isinstance(layer, TransformerBlock):
            x = layer(x, ids, training=training)
    return encoder.get_layer("sequence")(x)


def set_causal(encoder, causal=True):
    """Makes every block of `encoder` attend only to earlier positions (or not): before
    the first call that traces it (the flag is in each block's config)."""
    for layer in encoder.layers:
        if isinstance(layer, TransformerBlock):
            layer.causal = bool(causal)
    return encoder


def set_dropout(encoder, rate):
    """Sets the dropout rate of every embedding, attention and residual dropout of
    `encoder` (before the first call that traces it; the rate is in each layer's config)."""
    rate = float(rate)
    for layer in encoder.layers:
        if isinstance(layer, (TokenAndPositionEmbedding, TransformerBlock)):
            layer.dropout = rate
            layer.drop.rate = rate
        if isinstance(layer, TransformerBlock):
            layer.attention._dropout = rate  # Keras keeps the rate there (and in its dropout layer)
            if hasattr(layer.attention, "_dropout_layer"):
                layer.attention._dropout_layer.rate = rate
    return encoder


def token_embedding(encoder):
    """The token embedding matrix `[V, D]` (a language model's output layer, tied)."""
    return encoder.get_layer("embedding").tokens.embeddings
