"""The online linear probe a method model may train alongside its own task.

A Dense softmax classifier of the dataset's classes on the stop-gradient
features the step computes (augmented in training, see `probe_features`),
trained from the class labels `y` of the batches: SimCLR's in-run linear
evaluation (Chen et al. 2020). A model has one when its constructor calls
`init_probe` with `num_classes` and its `SUB_MODELS` include "probe"; its step
adds `probe_loss(features, y, training)`. Its `probe_loss` and `probe_accuracy`
join the model's metrics, its variables take no weight decay, and the export
serves `classify` (all through `MethodModel`).
"""

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.heads import linear_classifier
from keras_ssl.models.global_batch import classification_loss


class OnlineProbe:
    """The online probe's part of `MethodModel` (a mixin: `self.encoder` is the model's)."""

    probe = None
    num_classes = None

    def init_probe(self, feature_dim, num_classes=None, probe=None):
        """Sets up the online probe (a `linear_classifier` of `feature_dim` features,
        or `probe`) when `num_classes` is given; None otherwise."""
        self.num_classes = int(num_classes) if num_classes else None
        if probe is None and self.num_classes:
            probe = linear_classifier(feature_dim, self.num_classes)
        self.probe = probe
        self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
        self.probe_accuracy_tracker = keras.metrics.Mean(name="probe_accuracy")

    def probe_metrics(self):
        """The probe's trackers (`probe_loss`, `probe_accuracy`), or [] without one."""
        return [self.probe_loss_tracker, self.probe_accuracy_tracker] if self.probe is not None else []

    def probe_features(self, images, training=False):
        """What the probe reads at inference (`class_probabilities`, the served
        `classify`): the encoder's features of the images as given, unaugmented.
        In training the probe reads the features the step computes anyway, which
        are augmented: SimCLR's first view, as SimCLR's reference code trains its
        probe on the augmented batch (each method's `method_loss` says which)."""
        from keras_ssl.data.augment import to_float01

        return self.encoder(to_float01(images), training=training)

    def probe_loss(self, features, labels, training):
        """The probe's cross-entropy on `stop_gradient(features)` for integer class
        `labels` `[B_local]`, scaled so the sum over replicas is the global batch's
        mean; 0 without a probe or labels. Gradients reach only the probe."""
        if self.probe is None or labels is None:
            return 0.0
        logits = self.probe(tf.stop_gradient(features), training=training)
        return classification_loss(logits, tf.reshape(labels, [-1]), self.probe_loss_tracker,
                                   self.probe_accuracy_tracker)

    def class_probabilities(self, images):
        """The probe's softmax over the dataset's classes, `[B, num_classes]`."""
        return tf.nn.softmax(tf.cast(self.probe(self.probe_features(images, training=False)), tf.float32))

    def refuse_labels_without_probe(self, labels, what):
        """A `UserError` when class labels come in but there is no probe to use them
        (they would otherwise be ignored silently)."""
        if labels is not None and self.probe is None:
            raise UserError(f"{type(self).__name__} {what}; labels y given to fit() are class labels for the "
                            "online linear probe, which this model does not have: pass num_classes=N to train "
                            "one, or fit on x alone (batch builders: with_labels=False, e.g. "
                            "simclr_views(split, batch, with_labels=False))")

    def probe_parameter_groups(self):
        """The probe's variables, without weight decay (a linear evaluation has none); [] without one."""
        from keras_ssl.models.hooks import ParameterGroup

        if self.probe is None:
            return []
        return [ParameterGroup("probe", tuple(self.probe.trainable_variables), weight_decay=False)]

    def probe_endpoints(self):
        """`classify`: images -> the probe's class probabilities; [] without a probe."""
        from keras_ssl.models.endpoints import classify_endpoint

        if self.probe is None:
            return []
        return [classify_endpoint(self.class_probabilities, self.num_classes,
                                  "the dataset's classes (online linear probe)", dataset_classes=True)]
