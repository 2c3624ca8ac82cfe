"""Pretext-task models: the encoder learns by predicting how an image was transformed."""

import dataclasses

import keras
import tensorflow as tf

from keras_ssl.data.augment import to_float01
from keras_ssl.data.pretext import center_square, rotate_all
from keras_ssl.errors import UserError
from keras_ssl.heads import mlp_classifier
from keras_ssl.models.endpoints import ServingInput, classify_endpoint
from keras_ssl.models.global_batch import classification_loss, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register


@dataclasses.dataclass
class RotationOptions:
    """RotNet (Gidaris et al. 2018): a 4-way head on the encoder features;
    the 256-unit MLP head is ours (the paper classifies from conv blocks)."""

    head_hidden_dim: int = option(256, "classification head hidden size (0: a linear head)",
                                  check=lambda v: v >= 0, requirement=">= 0")
    online_probe: bool = option(True, "train a linear probe on frozen features in-run (labelled datasets)",
                                stored_default=False)  # runs before the probe existed had none


@dataclasses.dataclass
class RelativePositionOptions:
    """Relative patch position (Doersch, Gupta, Efros 2015): the paper's 3x3
    grid with gaps and jitter, scaled to the image (`small`: 28-64 px images;
    `imagenet`: the paper's 96 px patches); the 512-unit head is ours."""

    patch_preset: str = option("small", "patch, gap and jitter sizes relative to the image (small: 28-64 px)",
                               choices=("small", "imagenet"))
    head_hidden_dim: int = option(512, "classification head hidden size (0: a linear head)",
                                  check=lambda v: v >= 0, requirement=">= 0")


class _PretextModel(MethodModel):
    """Encoder + classification head on self-made labels: loss, accuracy, config.

    Subclasses set `TRACKED` (`("loss", <the accuracy's name>)`) and
    `_default_head()`, and implement `method_loss` with `_classify(logits, labels)`.
    """

    SUB_MODELS = ("encoder", "head")
    TRACKED = ("loss", "accuracy")

    def __init__(self, encoder, hidden_dim, head=None, num_classes=None, probe=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.hidden_dim = int(hidden_dim)
        self.head = head if head is not None else self._default_head()
        if (num_classes or probe is not None) and "probe" not in self.SUB_MODELS:
            raise UserError(f"{type(self).__name__} has no online probe; drop num_classes/probe")
        self.init_probe(int(encoder.output_shape[-1]), num_classes, probe)
        self.build()

    def _classify(self, logits, labels):
        """Cross-entropy scaled for the global batch; updates loss and accuracy."""
        loss, accuracy = self.TRACKED
        return classification_loss(logits, labels, self.trackers[loss], self.trackers[accuracy])


@keras.saving.register_keras_serializable(package="keras_ssl")
class RotationPrediction(_PretextModel):
    """RotNet (Gidaris et al. 2018): a 4-way classifier of the rotation applied.

    `fit()` takes image batches `x` (uint8 or float in [0, 1]; e.g. from
    `keras_ssl.data.pretext.rotation_batches`): every image is rotated by 0,
    90, 180 and 270 degrees inside the step and the model predicts which, so
    the rotation labels are made, never given. With `num_classes`, batches
    `(x, class_labels)` also train an online linear probe of the dataset's
    classes on `stop_gradient` of the unrotated images' features (see
    `MethodModel`); class labels given to a model without a probe are refused
    rather than read as rotations.

    The head is an MLP on the encoder features (`hidden_dim` units, BN, ReLU;
    0 = linear; default `RotationOptions.head_hidden_dim`), the encoder is what
    the user keeps. Metrics: `loss`,
    `rotation_accuracy` (and `probe_loss`, `probe_accuracy`). Under R replicas
    each replica returns `sum(local losses) / N_global`. Serves the embedding,
    `rotation` (images -> probabilities of the four rotations) and, with the
    probe, `classify`.
    """

    SUB_MODELS = ("encoder", "head", "probe")
    TRACKED = ("loss", "rotation_accuracy")

    def __init__(self, encoder, hidden_dim=RotationOptions.head_hidden_dim, head=None, num_classes=None, probe=None,
                 **kwargs):
        super().__init__(encoder, hidden_dim, head, num_classes, probe, **kwargs)

    def _default_head(self):
        return mlp_classifier(int(self.encoder.output_shape[-1]), self.hidden_dim, 4, name="rotation_head")

    def probe_features(self, images, training=False):
        """The encoder's features of the images' centre square, as the probe saw them
        in training (`rotate_all` crops non-square images to their centre square)."""
        return self.encoder(center_square(to_float01(images)), training=training)

    def rotation_probabilities(self, images):
        """Softmax over the four rotations, `[B, 4]`."""
        return tf.nn.softmax(tf.cast(self.head(self.encoder(to_float01(images), training=False)), tf.float32))

    def pretext_predictions(self, images, seed):
        """Every image in its four rotations: `(probabilities [4B, 4], labels [4B])`."""
        x, y = rotate_all(to_float01(images))
        return self.rotation_probabilities(x), y

    def serving_endpoints(self, image_shape, threshold=None):
        """The embedding signatures, `rotation` (images -> probabilities of the
        four rotations) and, with the probe, `classify`."""
        return super().serving_endpoints(image_shape, threshold) + [classify_endpoint(
            self.rotation_probabilities, 4, "rotation by 0/90/180/270 degrees", name="rotation")]

    def method_loss(self, data, training):
        x, labels = split_data(data)
        if isinstance(x, (tuple, list)):
            raise UserError("RotationPrediction expects image batches x (or (x, class_labels) with an online probe)")
        self.refuse_labels_without_probe(labels, "makes its own rotation labels")
        rotated, rotations = rotate_all(to_float01(x))
        features = self.encoder(rotated, training=training)
        loss = self._classify(self.head(features, training=training), rotations)
        return loss + self.probe_loss(features[:tf.shape(x)[0]], labels, training)  # the 0-degree block


@keras.saving.register_keras_serializable(package="keras_ssl")
class RelativePosition(_PretextModel):
    """Relative patch position (Doersch, Gupta, Efros 2015): which of the 8
    neighbours of the centre patch is the second patch?

    Both patches go through the one shared `encoder` (build it with input
    shape `(None, None, C)` so the same weights also embed whole images); the
    two feature vectors are concatenated and an MLP head (`hidden_dim`, BN,
    ReLU; default `RelativePositionOptions.head_hidden_dim`) classifies the 8
    positions. `fit()` takes
    `((centre, neighbour), labels)` from
    `keras_ssl.data.pretext.relative_position_batches`. Metrics: `loss`,
    `position_accuracy` (chance 1/8).
    """

    TRACKED = ("loss", "position_accuracy")

    def __init__(self, encoder, hidden_dim=RelativePositionOptions.head_hidden_dim, head=None, patch_size=None,
                 preset=RelativePositionOptions.patch_preset, **kwargs):
        """`patch_size` and `preset`: the training patches' side in pixels and
        the patch preset they came from (recorded for evaluation and export)."""
        super().__init__(encoder, hidden_dim, head, **kwargs)
        self.patch_size = None if patch_size is None else int(patch_size)
        self.preset = preset

    def _default_head(self):
        return mlp_classifier(2 * int(self.encoder.output_shape[-1]), self.hidden_dim, 8, name="position_head")

    def _logits(self, centre, neighbour, training):
        f = self.encoder(tf.concat([to_float01(centre), to_float01(neighbour)], axis=0), training=training)
        f_c, f_n = tf.split(f, 2, axis=0)
        return self.head(tf.concat([f_c, f_n], axis=-1), training=training)

    def position_probabilities(self, centre, neighbour):
        """Softmax over the 8 neighbour positions, `[B, 8]`."""
        return tf.nn.softmax(tf.cast(self._logits(centre, neighbour, False), tf.float32))

    def pretext_predictions(self, images, seed):
        """One (centre, neighbour) pair per image drawn with the stateless
        `seed` and the training preset: `(probabilities [B, 8], labels [B])`."""
        from keras_ssl.data.pretext import relative_position_pairs

        centre, neighbour, y, _ = relative_position_pairs(to_float01(images), seed, self.preset)
        return self.position_probabilities(centre, neighbour), y

    def serving_endpoints(self, image_shape, threshold=None):
        """The embedding signatures (whole images through the shared encoder)
        and `classify`: (centre, neighbour) patches, resized to the training
        patch size -> probabilities of the 8 neighbour positions."""
        if self.patch_size is None:
            raise UserError("this RelativePosition model records no patch_size; rebuild it with patch_size=")
        side = (self.patch_size, self.patch_size)
        meaning = ("neighbour position 0-7 (row, column): (0,0) (0,1) (0,2) (1,0) (1,2) (2,0) (2,1) (2,2), "
                   "the centre being (1,1)")
        return super().serving_endpoints(image_shape, threshold) + [classify_endpoint(
            self.position_probabilities, 8, meaning, name="position",
            inputs=(ServingInput("centre", size=side), ServingInput("neighbour", size=side)))]

    def method_loss(self, data, training):
        x, y = split_data(data)
        if not isinstance(x, (tuple, list)) or len(x) != 2 or y is None:
            raise UserError("RelativePosition expects batches ((centre, neighbour), labels)")
        return self._classify(self._logits(x[0], x[1], training), tf.cast(tf.reshape(y, [-1]), tf.int32))


def _build_rotation(run, options, encoder, dataset, stage=None):
    num_classes = dataset.num_classes if (options.online_probe and dataset.labelled) else None
    return RotationPrediction(encoder, num_classes=num_classes, **option_arguments(
        options, RotationPrediction, renamed={"head_hidden_dim": "hidden_dim"}))


def _rotation_data(run, options, split, stage=None):
    from keras_ssl.data.pretext import rotation_batches

    steps = epoch_steps(split, run.batch_size)
    return TrainingData(rotation_batches(split, run.batch_size, seed=run.seed, augment=run.augment_preset,
                                         with_labels=options.online_probe), steps, run.batch_size)


def _build_relative_position(run, options, encoder, dataset, stage=None):
    from keras_ssl.data.pretext import patch_geometry

    patch = patch_geometry(dataset.image_shape[0], options.patch_preset)[1]
    return RelativePosition(encoder, patch_size=patch, **option_arguments(
        options, RelativePosition, renamed={"head_hidden_dim": "hidden_dim", "patch_preset": "preset"}))


def _relative_position_data(run, options, split, stage=None):
    from keras_ssl.data.pretext import relative_position_batches

    steps = epoch_steps(split, run.batch_size)
    return TrainingData(relative_position_batches(split, run.batch_size, seed=run.seed, preset=options.patch_preset),
                        steps, run.batch_size)


register(Method(
    name="rotation", summary="rotation prediction, RotNet (Gidaris et al. 2018)",
    options=RotationOptions, build=_build_rotation, training_data=_rotation_data, images_per_example=4,
    evaluations=("probe", "pretext"),
    smoke_options=dict(augment="none", batch_size=8),
))
register(Method(
    name="relative_position", summary="relative patch position (Doersch, Gupta, Efros 2015)",
    options=RelativePositionOptions, build=_build_relative_position, training_data=_relative_position_data,
    images_per_example=2, evaluations=("probe", "pretext"), patch_encoder=True,
    smoke_options=dict(augment="none", batch_size=16, image_size=24),
))
