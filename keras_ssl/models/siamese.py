"""Siamese networks (Bromley et al. 1993; Hadsell et al. 2006; Koch et al. 2015)."""

import dataclasses

import keras
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.data.augment import to_float01
from keras_ssl.errors import UserError
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.metric_model import MetricModel, check_threshold, embed_images
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register

HEADS = ("distance", "l1_sigmoid")


@dataclasses.dataclass
class SiameseOptions:
    """Siamese hyper-parameters. Sources: the contrastive loss and margin 1.0
    (Hadsell, Chopra, LeCun 2006); the `l1_sigmoid` head (Koch et al. 2015);
    no embedding head and no normalisation by default (the encoder's features)."""

    head: str = option("distance", "siamese: contrastive loss on the distance, or Koch's weighted-L1 + sigmoid",
                       choices=HEADS)
    margin: float = option(1.0, "contrastive margin (Hadsell et al. 2006: 1.0)", check=lambda v: v > 0,
                           requirement="> 0")
    negative_hinge: str = option("distance", "max(0, m - d)^2 (distance) or max(0, m^2 - d^2) (squared)",
                                 choices=losses.NEGATIVE_HINGES)
    embedding_dim: int | None = option(None, "Dense embedding head size (default: none, the encoder features)",
                                       check=lambda v: v >= 1, requirement=">= 1")
    normalize_embeddings: bool = option(False, "L2-normalise the embeddings")


@keras.saving.register_keras_serializable(package="keras_ssl")
class Siamese(MetricModel):
    """Two inputs through one shared encoder, trained on same/different-class pairs.

    Heads:
      * `distance` (Hadsell et al. 2006): embeddings `e = g(f(x))` (optional
        Dense `embedding_dim` head, optional L2 normalisation), score = the
        Euclidean distance `d(e_a, e_b)`, loss `losses.contrastive` with
        `margin` and `negative_hinge`; a pair is "same" when `d < threshold`
        (default `margin / 2`, calibrate it with the evaluator).
      * `l1_sigmoid` (Koch et al. 2015): `p = sigmoid(w . |e_a - e_b| + b)`,
        binary cross-entropy; "same" when `p >= threshold` (default 0.5).

    `fit()` takes batches `((x_a, x_b), same)` with `same` 1 for a pair of the
    same class and 0 otherwise (see `keras_ssl.data.pairs`); images uint8 or
    float in [0, 1]. `model(images)` / `predict(images)` give embeddings.

    Metrics: `loss`, `pos_distance` and `neg_distance` (mean score of same and
    different pairs: a distance, or p for `l1_sigmoid`), `pair_accuracy` at
    the current threshold. Under R replicas each replica returns
    `sum(local pair losses) / N_global`, so loss and gradients equal one
    device on the whole batch. Defaults: `SiameseOptions`'s.
    """

    SUB_MODELS = ("encoder", "embedding_head", "score_head")
    TRACKED = ("loss", "pos_distance", "neg_distance", "pair_accuracy")

    def __init__(self, encoder, embedding_dim=SiameseOptions.embedding_dim, head=SiameseOptions.head,
                 margin=SiameseOptions.margin, negative_hinge=SiameseOptions.negative_hinge,
                 normalize=SiameseOptions.normalize_embeddings, threshold=None, embedding_head=None, score_head=None,
                 **kwargs):
        super().__init__(**kwargs)
        if head not in HEADS:
            raise UserError(f"head must be one of {HEADS}, got {head!r}")
        if negative_hinge not in losses.NEGATIVE_HINGES:
            raise UserError(f"negative_hinge must be one of {losses.NEGATIVE_HINGES}, got {negative_hinge!r}")
        if margin <= 0:
            raise UserError(f"margin must be > 0, got {margin}")
        self.encoder = encoder
        self.head = head
        self.margin = float(margin)
        self.negative_hinge = negative_hinge
        self.normalize = bool(normalize)
        self.embedding_dim = int(embedding_dim) if embedding_dim else None
        feature_dim = int(encoder.output_shape[-1])
        if embedding_head is None and self.embedding_dim:
            embedding_head = keras.Sequential(
                [keras.Input((feature_dim,)), keras.layers.Dense(self.embedding_dim, name="embedding")],
                name="embedding_head")
        self.embedding_head = embedding_head
        out_dim = self.embedding_dim or feature_dim
        if head == "l1_sigmoid" and score_head is None:
            score_head = keras.Sequential(
                [keras.Input((out_dim,)), keras.layers.Dense(1, name="l1_weights")], name="score_head")
        self.score_head = score_head
        if threshold is None:
            threshold = self.margin / 2.0 if head == "distance" else 0.5
        self.threshold = check_threshold(threshold)
        self.build()

    @property
    def SCORE_NAME(self):  # noqa: N802 (the MetricModel constant, per head here)
        return "distance" if self.head == "distance" else "score"

    def embed(self, images, training=False):
        """Embeddings `[B, D]` of images (uint8 or float in [0, 1])."""
        return embed_images(self.encoder, self.embedding_head, images, self.normalize, training)

    def pair_score(self, e_a, e_b):
        """Distance (`distance` head) or same-class probability (`l1_sigmoid`)."""
        if self.head == "distance":
            return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(e_a - e_b), axis=-1), 1e-12))
        return tf.sigmoid(self._logit(e_a, e_b))

    def _logit(self, e_a, e_b):
        return tf.cast(tf.reshape(self.score_head(tf.abs(e_a - e_b)), [-1]), tf.float32)

    def method_loss(self, data, training):
        x, same = split_data(data)
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise UserError("Siamese expects batches ((x_a, x_b), same)")
        if same is None:
            raise UserError("Siamese needs pair labels: batches ((x_a, x_b), same) with same in {0, 1}")
        x_a, x_b = x
        if x_a.shape[1:] != x_b.shape[1:]:
            raise UserError(f"pair inputs must have the same shape, got {x_a.shape} and {x_b.shape}")
        same = tf.cast(tf.reshape(same, [-1]), tf.float32)
        n_local = tf.shape(same)[0]
        e = self.embed(tf.concat([to_float01(x_a), to_float01(x_b)], axis=0), training=training)
        e_a, e_b = tf.split(e, 2, axis=0)
        if self.head == "distance":
            terms = losses.contrastive_terms(same, e_a, e_b, self.margin, self.negative_hinge)
        else:
            check = tf.debugging.Assert(
                tf.reduce_all(tf.logical_or(tf.equal(same, 0.0), tf.equal(same, 1.0))),
                ["Siamese: `same` labels must be 0 (different class) or 1 (same class)"])
            with tf.control_dependencies([check]):
                terms = tf.nn.sigmoid_cross_entropy_with_logits(labels=same, logits=self._logit(e_a, e_b))
        loss = tf.reduce_sum(terms) / tf.cast(global_batch_size(n_local), tf.float32)
        score = tf.stop_gradient(self.pair_score(e_a, e_b))
        correct = tf.cast(tf.equal(self.decide(score), same > 0.5), tf.float32)
        self.trackers["loss"].update_state(tf.reduce_mean(terms), sample_weight=tf.cast(n_local, tf.float32))
        self.trackers["pos_distance"].update_state(score, sample_weight=same)
        self.trackers["neg_distance"].update_state(score, sample_weight=1.0 - same)
        self.trackers["pair_accuracy"].update_state(correct)
        return loss


def _build(run, options, encoder, dataset, stage=None):
    return Siamese(encoder, **option_arguments(options, Siamese, renamed={"normalize_embeddings": "normalize"}))


def _training_data(run, options, split, stage=None):
    from keras_ssl.data.pairs import pair_batches

    if run.batch_size % 2:
        raise UserError("batch_size must be even for siamese (half positive, half negative pairs)")
    steps = epoch_steps(split, run.batch_size)
    return TrainingData(pair_batches(split, run.batch_size, seed=run.seed, augment=run.augment_preset), steps,
                        run.batch_size)


register(Method(
    name="siamese", summary="Siamese network on same/different pairs (Hadsell et al. 2006; Koch et al. 2015)",
    options=SiameseOptions, build=_build, training_data=_training_data, images_per_example=2,
    evaluations=("probe", "verification"), needs_labels=True,
    smoke_options=dict(augment="none", batch_size=16, normalize_embeddings=True, embedding_dim=8),
))
