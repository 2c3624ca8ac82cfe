"""What GPT and BERT share: a `keras_ssl.text_encoders` encoder, the run's tokenizer, an
output layer tied to the token embedding, and the text signatures.

    logits_i = h_i E^T        (h_i: the encoder's sequence at position i, E: the token embedding
                               [V, D]; GPT-1/2, BERT, Press & Wolf 2017)

Served, beside the modality's `serving_default` (strings -> the pooled embedding) and
`embed_tokens` (ids -> the same):

* `tokenize`: UTF-8 strings -> int32 ids `[sequence_length]` (the in-graph tokenizer:
  `[BOS] ... [EOS]`, `[PAD]` after);
* `token_logits`: int64 ids `[B, sequence_length]` -> float32 logits `[B, sequence_length,
  V]` over the tokenizer's `V` tokens (GPT: of the next token at each position; BERT: of the
  token at each position).
"""

import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.models.method_model import MethodModel
from keras_ssl.text_encoders import encode_sequence, token_embedding
from keras_ssl.tokenizers import PAD_ID


class TextModel(MethodModel):
    """A language model over int32 token ids `[B, L]` (`PAD_ID` after the text); see the
    module docstring. Subclasses set the encoder's causality and dropout."""

    SUB_MODELS = ("encoder", "tokenizer")
    MODALITY = "text"

    def __init__(self, encoder, tokenizer, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.tokenizer = tokenizer
        vocabulary = int(token_embedding(encoder).shape[0])
        if tokenizer.vocabulary_size() > vocabulary:
            raise UserError(f"the tokenizer has {tokenizer.vocabulary_size():,} tokens and the encoder's embedding "
                            f"{vocabulary:,}; build the encoder with vocabulary_size >= the tokenizer's")

    def vocabulary_size(self):
        """V: the tokenizer's tokens (the embedding may have more rows, never targets)."""
        return self.tokenizer.vocabulary_size()

    def sequence_logits(self, ids, training=False):
        """float32 `[B, L, V_embedding]`: `h_i E^T` at every position (all embedding rows)."""
        sequence = tf.cast(encode_sequence(self.encoder, tf.cast(ids, tf.int32), training=training), tf.float32)
        return tf.matmul(sequence, tf.cast(token_embedding(self.encoder), tf.float32), transpose_b=True)

    def token_logits(self, ids):
        """float32 `[B, L, V]` over the tokenizer's tokens (what `token_logits` serves)."""
        return self.sequence_logits(ids)[..., :self.vocabulary_size()]

    def serving_endpoints(self, input_shape, threshold=None):
        if threshold is not None:
            raise UserError(f"a threshold only applies to models with a verify signature, not {type(self).__name__}")
        from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput

        def embed(ids):
            return tf.math.l2_normalize(tf.cast(self.representation(ids), tf.float32), axis=-1)

        length, vocabulary = self.tokenizer.sequence_length, self.vocabulary_size()
        tokens = ServingInput("tokens", "tokens", shape=(length,), vocabulary_size=vocabulary)
        text = ServingInput("text", "text", tokenizer=self.tokenizer)
        own = [Endpoint("tokenize", (text,), (ServingOutput("ids", "int32", (length,), "the token ids: [BOS] ... "
                                                            "[EOS], [PAD] (0) after, or cut"),),
                        lambda ids: {"ids": tf.cast(ids, tf.int32)}),
               Endpoint("token_logits", (tokens,),
                        (ServingOutput("logits", "float32", (length, vocabulary), self.LOGITS_MEANING),),
                        lambda ids: {"logits": self.token_logits(ids)})]
        return (self.input_modality().embedding_endpoints(embed, self.representation_dim(input_shape),
                                                          tokenizer=self.tokenizer) + own + self.probe_endpoints())

    LOGITS_MEANING = "logits over the vocabulary at each position"


def text_layer_features(encoder, ids):
    """`{point: float32 [B, D]}`: the mean over the non-padding positions of the token
    embedding ("embedding") and of each Transformer block's output ("block1", ...), and
    the pooled representation after the final LayerNorm ("pooled"): the probe points."""
    from keras_ssl.text_encoders import TransformerBlock

    ids = tf.cast(ids, tf.int32)
    keep = tf.cast(ids != PAD_ID, tf.float32)[..., None]

    def pool(sequence):
        return tf.reduce_sum(tf.cast(sequence, tf.float32) * keep, axis=1) / tf.maximum(tf.reduce_sum(keep, 1), 1.0)

    x = encoder.get_layer("embedding")(ids, training=False)
    out = {"embedding": pool(x)}
    for layer in encoder.layers:
        if isinstance(layer, TransformerBlock):
            x = layer(x, ids, training=False)
            out[layer.name] = pool(x)
    out["pooled"] = pool(encoder.get_layer("sequence")(x))
    return out

