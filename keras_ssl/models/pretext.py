"""Pretext-task models: the encoder learns by predicting how an image was transformed."""

import keras
import tensorflow as tf

from keras_ssl.data.augment import to_float01
from keras_ssl.data.pretext import rotate_all
from keras_ssl.errors import UserError
from keras_ssl.heads import mlp_classifier
from keras_ssl.models.common import MethodModel, global_batch_size, split_data


class _PretextModel(MethodModel):
    """Encoder + classification head on self-made labels: loss, accuracy, config.

    Subclasses set `ACCURACY` (the metric's name) and `_default_head()`, and
    implement `_forward` with `_classify(logits, labels)`.
    """

    ACCURACY = "accuracy"

    def __init__(self, encoder, hidden_dim, head=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.hidden_dim = int(hidden_dim)
        self.head = head if head is not None else self._default_head()
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name=self.ACCURACY)
        self.build()

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def _children(self):
        return (self.encoder, self.head)

    def call(self, images, training=False):
        """Encoder features of images (uint8 or float in [0, 1])."""
        return self.encoder(to_float01(images), training=training)

    def _classify(self, logits, labels):
        """Cross-entropy scaled for the global batch; updates loss and accuracy."""
        logits = tf.cast(logits, tf.float32)
        terms = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        n_local = tf.shape(labels)[0]
        weight = tf.cast(n_local, tf.float32)
        self.loss_tracker.update_state(tf.reduce_mean(terms), sample_weight=weight)
        self.accuracy_tracker.update_state(tf.reduce_mean(hits), sample_weight=weight)
        return tf.reduce_sum(terms) / tf.cast(global_batch_size(n_local), tf.float32)

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder),
                      head=keras.saving.serialize_keras_object(self.head), hidden_dim=self.hidden_dim)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "head"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_ssl")
class RotationPrediction(_PretextModel):
    """RotNet (Gidaris et al. 2018): a 4-way classifier of the rotation applied.

    `fit()` takes either plain image batches `x` (all four rotations are made
    inside the step, the labels are the quarter turns) or pre-rotated batches
    `(images, rotation_labels)` from `keras_ssl.data.pretext.rotation_batches`.
    The head is an MLP on the encoder features (`hidden_dim` units, BN, ReLU;
    0 = linear), the encoder is what the user keeps. Metrics: `loss`,
    `rotation_accuracy`. Under R replicas each replica returns
    `sum(local losses) / N_global`.
    """

    ACCURACY = "rotation_accuracy"

    def __init__(self, encoder, hidden_dim=256, head=None, **kwargs):
        super().__init__(encoder, hidden_dim, head, **kwargs)

    def _default_head(self):
        return mlp_classifier(int(self.encoder.output_shape[-1]), self.hidden_dim, 4, name="rotation_head")

    def rotation_probabilities(self, images):
        """Softmax over the four rotations, `[B, 4]`."""
        return tf.nn.softmax(tf.cast(self.head(self.encoder(to_float01(images), training=False)), tf.float32))

    def _forward(self, data, training):
        x, y = split_data(data)
        if isinstance(x, (tuple, list)):
            raise UserError("RotationPrediction expects image batches x or (images, rotation_labels)")
        if y is None:
            x, y = rotate_all(to_float01(x))
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        return self._classify(self.head(self.encoder(to_float01(x), training=training), training=training), y)


@keras.saving.register_keras_serializable(package="keras_ssl")
class RelativePosition(_PretextModel):
    """Relative patch position (Doersch, Gupta, Efros 2015): which of the 8
    neighbours of the centre patch is the second patch?

    Both patches go through the one shared `encoder` (build it with input
    shape `(None, None, C)` so the same weights also embed whole images); the
    two feature vectors are concatenated and an MLP head (`hidden_dim`, BN,
    ReLU) classifies the 8 positions. `fit()` takes
    `((centre, neighbour), labels)` from
    `keras_ssl.data.pretext.relative_position_batches`. Metrics: `loss`,
    `position_accuracy` (chance 1/8).
    """

    ACCURACY = "position_accuracy"

    def __init__(self, encoder, hidden_dim=512, head=None, patch_size=None, preset="small", **kwargs):
        """`patch_size` and `preset`: the training patches' side in pixels and
        the patch preset they came from (recorded for evaluation and export)."""
        super().__init__(encoder, hidden_dim, head, **kwargs)
        self.patch_size = None if patch_size is None else int(patch_size)
        self.preset = preset

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, preset=self.preset)
        return config

    def _default_head(self):
        return mlp_classifier(2 * int(self.encoder.output_shape[-1]), self.hidden_dim, 8, name="position_head")

    def _logits(self, centre, neighbour, training):
        f = self.encoder(tf.concat([to_float01(centre), to_float01(neighbour)], axis=0), training=training)
        f_c, f_n = tf.split(f, 2, axis=0)
        return self.head(tf.concat([f_c, f_n], axis=-1), training=training)

    def position_probabilities(self, centre, neighbour):
        """Softmax over the 8 neighbour positions, `[B, 8]`."""
        return tf.nn.softmax(tf.cast(self._logits(centre, neighbour, False), tf.float32))

    def _forward(self, data, training):
        x, y = split_data(data)
        if not isinstance(x, (tuple, list)) or len(x) != 2 or y is None:
            raise UserError("RelativePosition expects batches ((centre, neighbour), labels)")
        return self._classify(self._logits(x[0], x[1], training), tf.cast(tf.reshape(y, [-1]), tf.int32))
