"""Triplet networks (Hoffer & Ailon 2015; FaceNet, Schroff et al. 2015; Hermans et al. 2017)."""

import dataclasses

import keras
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.data.augment import to_float01
from keras_ssl.errors import UserError
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.metric_model import MetricModel, embed_images
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register


OBJECTIVES = ("triplet", "multi_similarity")


@dataclasses.dataclass
class TripletOptions:
    """Online triplet mining. Sources: margin 0.2 and 128-d L2-normalised
    embeddings (FaceNet, Schroff et al. 2015); P x K batches and the batch-hard
    variant (Hermans et al. 2017); P = 8, K = 4 are ours (a 10-class dataset)."""

    margin: float = option(0.2, "triplet margin (FaceNet: 0.2)", check=lambda v: v > 0, requirement="> 0")
    embedding_dim: int = option(128, "Dense embedding head size (FaceNet: 128)", check=lambda v: v >= 1,
                                requirement=">= 1")
    objective: str = option("triplet", "the loss on the P x K batch: triplet (the hinge on mined triplets, "
                            "--mining, --margin) or multi_similarity (Wang et al. 2019, with its own pair mining; "
                            "--mining and --margin unused)", choices=OBJECTIVES, stored_default="triplet")
    mining: str = option("semi_hard", "online mining strategy", choices=losses.MINING)
    soft_margin: bool = option(False, "softplus instead of the hinge (Hermans et al. 2017)")
    classes_per_batch: int = option(8, "P classes per batch", check=lambda v: v >= 2, requirement=">= 2")
    images_per_class: int = option(4, "K images per class (batch = P*K; every anchor needs a positive)",
                                   check=lambda v: v >= 2, requirement=">= 2")


@dataclasses.dataclass
class TripletExplicitOptions:
    """Explicit (anchor, positive, negative) triplets. Sources: margin 0.2 and
    128-d L2-normalised embeddings (FaceNet); triplets as in Hoffer & Ailon 2015."""

    margin: float = option(0.2, "triplet margin (FaceNet: 0.2)", check=lambda v: v > 0, requirement="> 0")
    embedding_dim: int = option(128, "Dense embedding head size (FaceNet: 128)", check=lambda v: v >= 1,
                                requirement=">= 1")


class _Embedding(MetricModel):
    """Shared encoder + optional Dense embedding head + L2 normalisation; pairs
    compared by Euclidean distance (no threshold of its own: `verify` is
    exported with a calibrated or given one)."""

    SUB_MODELS = ("encoder", "embedding_head")
    TRACKED = ("loss", "active_fraction", "pos_distance", "neg_distance", "embedding_std")

    def __init__(self, encoder, embedding_dim, normalize, margin, embedding_head=None, **kwargs):
        super().__init__(**kwargs)
        if margin < 0:
            raise UserError(f"margin must be >= 0, got {margin}")
        self.encoder = encoder
        self.embedding_dim = int(embedding_dim) if embedding_dim else None
        self.normalize = bool(normalize)
        self.margin = float(margin)
        if embedding_head is None and self.embedding_dim:
            embedding_head = keras.Sequential(
                [keras.Input((int(encoder.output_shape[-1]),)),
                 keras.layers.Dense(self.embedding_dim, name="embedding")], name="embedding_head")
        self.embedding_head = embedding_head

    def embed(self, images, training=False):
        """Embeddings `[B, D]` (L2-normalised by default) of uint8 or [0, 1] images."""
        return embed_images(self.encoder, self.embedding_head, images, self.normalize, training)

    def pair_score(self, e_a, e_b):
        """Euclidean distance (for verification-style use and export)."""
        return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(e_a - e_b), axis=-1), 1e-12))

    def _track_std(self, e):
        self.trackers["embedding_std"].update_state(
            tf.reduce_mean(tf.math.reduce_std(tf.math.l2_normalize(e, -1), axis=0)))


@keras.saving.register_keras_serializable(package="keras_ssl")
class OnlineTriplet(_Embedding):
    """Triplet loss with online mining on labelled batches (`losses.batch_triplet`), or
    with `objective="multi_similarity"` the Multi-Similarity loss and its pair mining
    (`losses.multi_similarity_terms`, Wang et al. 2019) on the same batches.

    `fit()` takes `(images, labels)` batches, best class-balanced P x K
    batches (`keras_ssl.data.sampling.pk_batches`). Defaults: L2-normalised
    embeddings and `TripletOptions`'s: 128-d, margin 0.2 (FaceNet), `mining="semi_hard"`.

    Under R replicas mining sees the GLOBAL batch: embeddings and labels are
    all-gathered, each replica computes the loss of the whole batch and returns
    a 1/R share, so loss and gradients equal one device on the whole batch
    (the all-gather's gradient routes each row's share back to its replica).

    Metrics: `loss`, `active_fraction` (share of the mined terms with a
    non-zero loss; Multi-Similarity: share of the pairs its mining keeps),
    `pos_distance` / `neg_distance` (mean Euclidean distance of same- and
    different-class pairs in the batch), `embedding_std`.
    """

    def __init__(self, encoder, embedding_dim=TripletOptions.embedding_dim, normalize=True,
                 margin=TripletOptions.margin, mining=TripletOptions.mining, soft=TripletOptions.soft_margin,
                 objective=TripletOptions.objective, **kwargs):
        if mining not in losses.MINING:
            raise UserError(f"mining must be one of {losses.MINING}, got {mining!r}")
        if objective not in OBJECTIVES:
            raise UserError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        super().__init__(encoder, embedding_dim, normalize, margin, **kwargs)
        self.mining = mining
        self.soft = bool(soft)
        self.objective = objective
        self.build()

    def _terms(self, labels, e):
        """`(values, counted, active)` of the objective on the global batch (see `method_loss`)."""
        if self.objective == "multi_similarity":
            values, counted, kept = losses.multi_similarity_terms(labels, e)
            n = tf.cast(tf.shape(labels)[0], tf.float32)  # kept pairs over the n (n - 1) ordered pairs
            return values, counted, tf.math.divide_no_nan(tf.reduce_sum(tf.cast(kept, tf.float32)), n * (n - 1.0))
        values, counted = losses.batch_triplet_terms(labels, e, self.margin, self.mining, self.soft)
        mask = tf.cast(counted, tf.float32)
        if self.mining == "all":  # counted excludes zero-loss triplets: active over valid ones
            pos = tf.logical_and(tf.equal(labels[:, None], labels[None, :]),
                                 tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
            neg = tf.not_equal(labels[:, None], labels[None, :])
            valid = tf.cast(tf.logical_and(pos[:, :, None], neg[:, None, :]), tf.float32)
            return values, counted, tf.math.divide_no_nan(tf.reduce_sum(mask), tf.reduce_sum(valid))
        return values, counted, tf.math.divide_no_nan(tf.reduce_sum(mask * tf.cast(values > 0, tf.float32)),
                                                      tf.reduce_sum(mask))

    def method_loss(self, data, training):
        x, y = split_data(data)
        if y is None:
            raise UserError("OnlineTriplet needs labelled batches (images, labels)")
        e = self.embed(x, training=training)
        labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
        ctx = tf.distribute.get_replica_context()
        replicas = 1 if ctx is None else ctx.num_replicas_in_sync
        e_all, _ = losses.gather_across_replicas(e)
        labels_all, _ = losses.gather_across_replicas(labels)
        values, counted, active = self._terms(labels_all, e_all)
        mask = tf.cast(counted, tf.float32)
        full_loss = tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))
        d = tf.sqrt(tf.maximum(losses.pairwise_squared_distances(e_all), 1e-12))
        same = tf.cast(tf.equal(labels_all[:, None], labels_all[None, :]), tf.float32)
        off_diag = 1.0 - tf.eye(tf.shape(d)[0])
        self.trackers["loss"].update_state(full_loss)
        self.trackers["active_fraction"].update_state(active)
        self.trackers["pos_distance"].update_state(d, sample_weight=same * off_diag)
        self.trackers["neg_distance"].update_state(d, sample_weight=1.0 - same)
        self._track_std(e)
        # Every replica holds the same full loss: each contributes 1/R of it.
        return full_loss / replicas


@keras.saving.register_keras_serializable(package="keras_ssl")
class TripletNetwork(_Embedding):
    """Explicit triplets `(anchor, positive, negative)` through one shared encoder
    (Hoffer & Ailon 2015), loss `losses.triplet`. Defaults: L2-normalised
    embeddings and `TripletExplicitOptions`'s (128-d, FaceNet's margin 0.2).

    `fit()` takes batches `(x_a, x_p, x_n)` (no labels needed). Under R
    replicas each returns `sum(local triplet losses) / N_global`.
    """

    def __init__(self, encoder, embedding_dim=TripletExplicitOptions.embedding_dim, normalize=True,
                 margin=TripletExplicitOptions.margin, **kwargs):
        super().__init__(encoder, embedding_dim, normalize, margin, **kwargs)
        self.build()

    def method_loss(self, data, training):
        # (a, p, n) itself, or ((a, p, n),) / ((a, p, n), ignored_labels)
        x = data if (isinstance(data, (tuple, list)) and len(data) == 3
                     and not isinstance(data[0], (tuple, list))) else split_data(data)[0]
        if not isinstance(x, (tuple, list)) or len(x) != 3:
            raise UserError("TripletNetwork expects batches (anchor, positive, negative)")
        if not (x[0].shape[1:] == x[1].shape[1:] == x[2].shape[1:]):
            raise UserError(f"triplet inputs must have the same shape, got {[t.shape for t in x]}")
        n_local = tf.shape(x[0])[0]
        e = self.embed(tf.concat([to_float01(t) for t in x], axis=0), training=training)
        e_a, e_p, e_n = tf.split(e, 3, axis=0)
        d_ap = tf.reduce_sum(tf.square(e_a - e_p), axis=-1)
        d_an = tf.reduce_sum(tf.square(e_a - e_n), axis=-1)
        terms = tf.nn.relu(d_ap - d_an + self.margin)
        loss = tf.reduce_sum(terms) / tf.cast(global_batch_size(n_local), tf.float32)
        weight = tf.cast(n_local, tf.float32)
        self.trackers["loss"].update_state(tf.reduce_mean(terms), sample_weight=weight)
        self.trackers["active_fraction"].update_state(tf.reduce_mean(tf.cast(terms > 0, tf.float32)),
                                                      sample_weight=weight)
        self.trackers["pos_distance"].update_state(tf.sqrt(tf.maximum(d_ap, 1e-12)))
        self.trackers["neg_distance"].update_state(tf.sqrt(tf.maximum(d_an, 1e-12)))
        self._track_std(e)
        return loss


def _build_online(run, options, encoder, dataset, stage=None):
    return OnlineTriplet(encoder, **option_arguments(options, OnlineTriplet, renamed={"soft_margin": "soft"}))


def _online_data(run, options, split, stage=None):
    """Class-balanced P x K batches: the batch size is P*K, not --batch_size."""
    from keras_ssl.data.sampling import pk_batches, pk_plan

    p, k = options.classes_per_batch, options.images_per_class
    steps = len(pk_plan(split.labels, p, k, run.seed))
    return TrainingData(pk_batches(split, p, k, seed=run.seed, augment=run.augment_preset, epochs=run.epochs),
                        steps, p * k)


def _build_explicit(run, options, encoder, dataset, stage=None):
    return TripletNetwork(encoder, **option_arguments(options, TripletNetwork))


def _explicit_data(run, options, split, stage=None):
    from keras_ssl.data.pairs import triplet_batches

    steps = epoch_steps(split, run.batch_size)
    return TrainingData(triplet_batches(split, run.batch_size, seed=run.seed, augment=run.augment_preset), steps,
                        run.batch_size)


register(Method(
    name="triplet", summary="triplet network, online mining on P x K batches (FaceNet; Hermans et al. 2017)",
    options=TripletOptions, build=_build_online, training_data=_online_data, images_per_example=1,
    evaluations=("probe", "verification", "retrieval"), needs_labels=True,
    smoke_options=dict(augment="none", classes_per_batch=4, images_per_class=4, embedding_dim=8),
))
register(Method(
    name="triplet_explicit", summary="triplet network on explicit (anchor, positive, negative) triplets "
    "(Hoffer & Ailon 2015)",
    options=TripletExplicitOptions, build=_build_explicit, training_data=_explicit_data, images_per_example=3,
    evaluations=("probe", "verification", "retrieval"), needs_labels=True,
    smoke_options=dict(augment="none", batch_size=16, embedding_dim=8),
))
