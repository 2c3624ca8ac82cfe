"""Methods defined for the tests only, registered beside the library's so that every
registry-driven test (the contract test, one device vs two replicas, compile recovery)
holds them to the same checks.

* `toy_cluster_targets`: a second stage. It continues a finished `rotation` run (its
  parent): `prepare` clusters the parent's representation of the training images with
  k-means (HuBERT's second iteration in miniature: targets from the previous model's
  features) and saves the centroids and each training image's cluster; the method then
  trains a fresh encoder and a linear head to predict those clusters. It serves the
  embedding (and `clusters`: the predicted cluster probabilities).
* `toy_autoencoder`: a generative method without an embedding signature. An encoder to
  an 8-d latent, a decoder back to pixels (mean squared error). It serves
  `serving_default` = `sample(seeds)` (uint8 images decoded from a standard-normal
  latent drawn with the seed, the latent, and a string naming the seed),
  `decode(latent)` (uint8 images) and `reconstruct(images)`.

Binaries run in subprocesses see these methods through `tests.run_binary`.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.models.common import MethodModel, classification_loss, split_data
from keras_ssl.models.endpoints import ServingInput, classify_endpoint
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register

PARENT = "rotation"


@keras.saving.register_keras_serializable(package="keras_ssl_tests")
class ClusterTargets(MethodModel):
    """Encoder + linear head trained on fixed cluster targets `y` (from `prepare`)."""

    SUB_MODELS = ("encoder", "head")

    def __init__(self, encoder, clusters=4, head=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.clusters = int(clusters)
        self.head = head if head is not None else keras.Sequential(
            [keras.Input((int(encoder.output_shape[-1]),)), keras.layers.Dense(self.clusters)], name="head")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="cluster_accuracy")
        self.build()

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def method_loss(self, data, training):
        from keras_ssl.data.augment import to_float01

        x, y = split_data(data)
        logits = self.head(self.encoder(to_float01(self.checked_inputs(x)), training=training), training=training)
        return classification_loss(logits, y, self.loss_tracker, self.accuracy_tracker)

    def serving_endpoints(self, image_shape, threshold=None):
        from keras_ssl.data.augment import to_float01

        def probabilities(images):
            return tf.nn.softmax(tf.cast(self.head(self.encoder(to_float01(images))), tf.float32))

        return super().serving_endpoints(image_shape, threshold) + [
            classify_endpoint(probabilities, self.clusters, "the parent's k-means clusters",
                              inputs=(ServingInput("images"),), name="clusters")]

    def get_config(self):
        config = super().get_config()
        config.update(clusters=self.clusters)
        return config


@dataclasses.dataclass
class ClusterTargetsOptions:
    clusters: int = option(4, "k-means clusters of the parent's features (the targets)", check=lambda v: v >= 2,
                           requirement=">= 2")
    worker_dependent: bool = option(False, "test only: number the clusters by the worker's index (a prepare that "
                                    "differs between workers, which multi-worker training must refuse)")


def _prepare(run, options, split, parent):
    """k-means (scikit-learn, seed 0) of the parent's L2-normalised representation of the
    training images: `centroids` `[k, D]` and `targets` `[N]` (each image's cluster)."""
    import json
    from sklearn.cluster import KMeans

    features = np.asarray(parent.predict(split.images, batch_size=256, verbose=0), np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
    kmeans = KMeans(n_clusters=options.clusters, n_init=4, random_state=0).fit(features)
    shift = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0) \
        if options.worker_dependent else 0
    return {"centroids": np.roll(kmeans.cluster_centers_.astype(np.float32), shift, axis=0),
            "targets": ((kmeans.labels_ + shift) % options.clusters).astype(np.int32)}


def _build(run, options, encoder, dataset, stage=None):
    assert stage is not None and stage.parent is not None and not stage.parent.trainable
    assert stage.artefacts["centroids"].shape[0] == options.clusters
    return ClusterTargets(encoder, clusters=options.clusters)


def _training_data(run, options, split, stage=None):
    targets = stage.artefacts["targets"]
    if len(targets) != len(split):  # evaluation on another split: the nearest centroid of the parent's features
        features = np.asarray(stage.parent.predict(split.images, batch_size=256, verbose=0), np.float32)
        features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
        targets = np.argmax(features @ stage.artefacts["centroids"].T, axis=1).astype(np.int32)
    data = (tf.data.Dataset.from_tensor_slices((split.images, targets)).shuffle(len(split), seed=run.seed)
            .repeat().batch(run.batch_size, drop_remainder=True).prefetch(2))
    return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)


register(Method(
    name="toy_cluster_targets", summary="test-only second stage: predict k-means clusters of a rotation run",
    options=ClusterTargetsOptions, build=_build, training_data=_training_data, parent=PARENT, prepare=_prepare,
    smoke_options=dict(augment="none", batch_size=16),
))


LATENT_DIM = 8


@keras.saving.register_keras_serializable(package="keras_ssl_tests")
class ToyAutoencoder(MethodModel):
    """Encoder -> Dense latent -> Dense decoder -> sigmoid pixels; loss: mean squared error."""

    SUB_MODELS = ("encoder", "to_latent", "decoder")

    def __init__(self, encoder, image_shape=(8, 8, 1), to_latent=None, decoder=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.image_shape = tuple(int(d) for d in image_shape)
        features = int(encoder.output_shape[-1])
        self.to_latent = to_latent if to_latent is not None else keras.Sequential(
            [keras.Input((features,)), keras.layers.Dense(LATENT_DIM)], name="to_latent")
        self.decoder = decoder if decoder is not None else keras.Sequential(
            [keras.Input((LATENT_DIM,)), keras.layers.Dense(int(np.prod(self.image_shape)), activation="sigmoid"),
             keras.layers.Reshape(self.image_shape)], name="decoder")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.build()

    @property
    def metrics(self):
        return [self.loss_tracker]

    def latent(self, images, training=False):
        from keras_ssl.data.augment import to_float01

        return self.to_latent(self.encoder(to_float01(images), training=training), training=training)

    def representation(self, images, training=False):
        return self.latent(images, training)

    def method_loss(self, data, training):
        from keras_ssl.data.augment import to_float01
        from keras_ssl.models.common import global_batch_size

        x, _ = split_data(data)
        x = to_float01(self.checked_inputs(x))
        errors = tf.reduce_mean(tf.square(tf.cast(self.decoder(self.latent(x, training), training=training),
                                                  tf.float32) - tf.cast(x, tf.float32)), axis=[1, 2, 3])
        self.loss_tracker.update_state(tf.reduce_mean(errors), sample_weight=tf.cast(tf.shape(errors)[0], tf.float32))
        return tf.reduce_sum(errors) / tf.cast(global_batch_size(tf.shape(errors)[0]), tf.float32)

    def to_uint8(self, latents):
        pixels = tf.cast(self.decoder(latents, training=False), tf.float32)
        return tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 1.0) * 255.0), tf.uint8)

    def serving_endpoints(self, image_shape, threshold=None):
        from keras_ssl.models.endpoints import Endpoint, ServingOutput

        images = ServingOutput("images", "uint8", self.image_shape, "decoded images")

        def sample(seeds):
            latents = tf.map_fn(lambda s: tf.random.stateless_normal([LATENT_DIM], tf.stack([s, 0])), seeds,
                                fn_output_signature=tf.float32)
            return {"images": self.to_uint8(latents), "latent": latents,
                    "note": tf.strings.join(["sample of seed ", tf.strings.as_string(seeds)])}

        return [
            Endpoint("serving_default", (ServingInput("seeds", "seeds"),),
                     (images, ServingOutput("latent", "float32", (None,), "the standard-normal latent drawn"),
                      ServingOutput("note", "string", (), "which seed made it")), sample),
            Endpoint("decode", (ServingInput("latent", "latent", shape=(LATENT_DIM,)),), (images,),
                     lambda latents: {"images": self.to_uint8(latents)}),
            Endpoint("reconstruct", (ServingInput("images"),), (images,),
                     lambda x: {"images": self.to_uint8(self.latent(x))}),
        ]

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=self.image_shape)
        return config


@dataclasses.dataclass
class ToyAutoencoderOptions:
    pass


def _build_autoencoder(run, options, encoder, dataset, stage=None):
    return ToyAutoencoder(encoder, image_shape=dataset.image_shape)


def _autoencoder_data(run, options, split, stage=None):
    data = (tf.data.Dataset.from_tensor_slices(split.images).shuffle(len(split), seed=run.seed).repeat()
            .batch(run.batch_size, drop_remainder=True).prefetch(2))
    return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)


register(Method(
    name="toy_autoencoder", summary="test-only generative method: serves sample(seeds) and decode(latent)",
    options=ToyAutoencoderOptions, build=_build_autoencoder, training_data=_autoencoder_data,
    smoke_options=dict(augment="none", batch_size=16),
))

import tests.toy_modality  # noqa: E402,F401  (a third modality and its method: tests/toy_modality.py)
