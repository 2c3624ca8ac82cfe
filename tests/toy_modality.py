"""A third modality and a method on it, defined outside keras_ssl as the next row (or a
user) adds one: what adding a modality touches is this one module.

`vectors`: float32 feature vectors `[D]` (here scikit-learn's 8x8 digits, flattened and
scaled to [0, 1]), with its own settings dataclass (`--vector_noise`, a generated
flag), encoder, dataset class, serving input kind (`vector`), probe evaluation and smoke
dataset. `toy_denoising` trains an MLP encoder to reconstruct clean vectors from noisy
ones. The contract test (tests/test_method_contract.py) takes both from the registries
and holds them to every check: train, resume, reload, evaluate, export, serve without
keras_ssl, refuse bad input.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.data.splits import IndexedExamples, LabelledFacts
from keras_ssl.errors import UserError
from keras_ssl.modalities.base import Modality, register as register_modality
from keras_ssl.modalities.input_kinds import InputKind, in_order, refuse, register_input_kind
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register

NAME = "vectors"


@dataclasses.dataclass
class VectorSplit(IndexedExamples):
    vectors: np.ndarray
    labels: np.ndarray | None


@dataclasses.dataclass
class VectorDataset(LabelledFacts):
    name: str
    train: VectorSplit
    test: VectorSplit
    class_names: tuple = ()
    modality = NAME

    @property
    def input_shape(self):
        return (int(self.train.vectors.shape[1]),)


@dataclasses.dataclass
class VectorSettings:
    vector_noise: float = option(0.1, "std of the Gaussian noise added to training vectors",
                                 check=lambda v: v >= 0, requirement=">= 0")


def load_vectors(spec):
    from keras_ssl.data import load_source

    if spec != "digits":
        raise UserError(f"the vectors modality reads only digits, got {spec!r}")
    images = load_source("digits")

    def split(s):
        return VectorSplit(s.images.reshape(len(s), -1).astype(np.float32) / 255.0, s.labels)

    return VectorDataset("digits_vectors", split(images.train), split(images.test), images.class_names)


class VectorModality(Modality):
    name = NAME
    unit = "vectors"
    encoders = ("mlp",)
    default_encoder = "mlp"
    settings = VectorSettings

    input_rank = 2

    def check_batch(self, model, shape, dtype):
        if len(shape) != 2 or shape[-1] != model.encoder.input_shape[-1]:
            raise UserError(f"{type(model).__name__} expects vector batches [batch, {model.encoder.input_shape[-1]}], "
                            f"got shape {shape}")
        if not dtype.is_floating:
            raise UserError(f"{type(model).__name__} expects float vectors in [0, 1], got {dtype.name}")

    def embedding_endpoints(self, embed, dim):
        from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput

        return [Endpoint("serving_default", (ServingInput("vectors", "vector"),),
                         (ServingOutput("embedding", "float32", (dim,), "L2-normalised"),),
                         lambda vectors: {"embedding": embed(vectors)})]

    def load_run_dataset(self, config, dataset=None, data_dir=None, input_shape=None):
        return load_vectors(dataset or config.dataset)

    def examples(self, split):
        return split.vectors

    def describe_examples(self, dataset, count):
        return f"{count:,} vectors of {dataset.input_shape[0]}"

    def build_encoder(self, config, dataset, size_agnostic=False):
        width = max(4, int(32 * config.width_multiplier))
        return keras.Sequential([keras.Input(dataset.input_shape), keras.layers.Dense(width, activation="relu"),
                                 keras.layers.Dense(16)], name="mlp")

    def encoder_to_keep(self, config, encoder, dataset):
        return encoder

    def serving_input_shape(self, config, model_dir):
        from keras_ssl.saving import load_model

        return tuple(load_model(os.path.join(model_dir, "encoder.keras")).input_shape[1:])

    def evaluate_labelled(self, config, model, model_dir, dataset, request):
        from keras_ssl.evaluation.classification import embedding_plot, evaluate_features

        train = dataset.train.take(request.train_limit)
        train_x = np.asarray(model.representation(train.vectors))
        test_x = np.asarray(model.representation(dataset.test.vectors))
        results = evaluate_features(train_x, train.labels, test_x, dataset.test.labels, dataset.num_classes,
                                    probe_max_iter=request.probe_max_iter)
        results["feature_dim"] = int(train_x.shape[1])
        if request.output_dir and request.plot:
            results["embedding_plot"] = embedding_plot(test_x, dataset.test.labels,
                                                       os.path.join(request.output_dir, "embedding.png"),
                                                       dataset.class_names, method=request.plot)
        return results

    def unlabelled_features(self, model, encoder, split):
        return np.asarray(model.representation(split.vectors))

    def serving_facts(self, input_shape):
        return {"vector_dim": input_shape[0], "preprocessing": "none"}

    def smoke_dataset(self, root):
        return {"dataset": "digits"}


class Vectors(InputKind):
    """`vector`: float32 `[batch, D]`, finite, in [0, 1]."""

    name, modality = "vector", NAME

    def spec(self, serving_input, input_shape):
        return tf.TensorSpec([None, *input_shape], tf.float32, name=serving_input.name)

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        bad = tf.reduce_any(tf.logical_not(tf.math.is_finite(tensor)) | (tensor < 0) | (tensor > 1), axis=1)
        with tf.control_dependencies(in_order(lambda: refuse(bad, f"{endpoint_name}: vectors outside [0, 1]",
                                                             "send values in [0, 1]"))):
            return tf.identity(tensor)

    def describe(self, input_shape, serving_input):
        return f"float32 [batch, {input_shape[0]}] in [0, 1]"

    def warmup_value(self, input_shape, serving_input):
        return np.zeros([1, *input_shape], np.float32)

    def request_value(self, examples, input_shape, serving_input):
        return np.asarray(examples, np.float32)

    def function_input(self, examples, input_shape, serving_input):
        return np.asarray(examples, np.float32)

    def bad_value(self, examples, input_shape, serving_input):
        value = np.array(examples[:2], np.float32)
        value[1, 0] = np.nan
        return value


register_modality(VectorModality())
register_input_kind(Vectors())


@keras.saving.register_keras_serializable(package="keras_ssl_tests")
class Denoising(MethodModel):
    """Encoder -> Dense decoder back to the clean vector from a noisy one; loss: mean squared error."""

    SUB_MODELS = ("encoder", "decoder")
    TRACKED = ("loss",)
    MODALITY = NAME  # the batch check, conversion and default signatures are the modality's

    def __init__(self, encoder, decoder=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        dim = int(encoder.input_shape[-1])
        self.decoder = decoder if decoder is not None else keras.Sequential(
            [keras.Input((int(encoder.output_shape[-1]),)), keras.layers.Dense(dim, activation="sigmoid")],
            name="decoder")
        self.build()

    def method_loss(self, data, training):
        """Batches of `(noisy, clean)` vectors (`training_data` adds the noise, so that a
        replica's share of a batch is what one device sees), or clean vectors alone."""
        noisy, clean = split_data(data)
        noisy = tf.cast(self.checked_inputs(noisy), tf.float32)
        clean = noisy if clean is None else tf.cast(clean, tf.float32)
        errors = tf.reduce_mean(tf.square(tf.cast(self.decoder(self.encoder(noisy, training=training),
                                                               training=training), tf.float32) - clean), axis=1)
        self.trackers["loss"].update_state(tf.reduce_mean(errors), sample_weight=tf.cast(tf.shape(errors)[0],
                                                                                           tf.float32))
        return tf.reduce_sum(errors) / tf.cast(global_batch_size(tf.shape(errors)[0]), tf.float32)


@dataclasses.dataclass
class DenoisingOptions:
    pass


def _build(run, options, encoder, dataset, stage=None):
    return Denoising(encoder)


def _training_data(run, options, split, stage=None):
    """`(noisy, clean)` batches: Gaussian noise of std `--vector_noise`, seeded per example."""
    noise = run.settings.vector_noise

    def noisy(index, clean):
        seed = tf.stack([tf.constant(run.seed, tf.int64), index])
        return clean + noise * tf.random.stateless_normal(tf.shape(clean), seed), clean

    data = (tf.data.Dataset.from_tensor_slices(split.vectors).shuffle(len(split), seed=run.seed).repeat()
            .enumerate().map(noisy).batch(run.batch_size, drop_remainder=True).prefetch(2))
    return TrainingData(data, epoch_steps(split, run.batch_size), run.batch_size)


register(Method(
    name="toy_denoising", summary="test-only method of the test-only vectors modality: denoising autoencoder",
    options=DenoisingOptions, build=_build, training_data=_training_data, modality=NAME,
    smoke_options=dict(batch_size=16),
))
