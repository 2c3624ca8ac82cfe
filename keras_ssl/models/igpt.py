"""Image GPT (`--method=igpt`; Chen et al. 2020, "Generative Pretraining from Pixels"):
next-pixel prediction with a causal Transformer over the raster-ordered pixels of
grayscale images reduced to a palette of grey levels (16 by default), and the
representation read from the mean of a layer's outputs.

    keras-ssl-train --flagfile=flags/igpt_fashion_mnist.cfg    # 14x14 Fashion-MNIST, 16 grey levels
    keras-ssl-evaluate --model_dir=runs/igpt_fashion_mnist      # probes per block, completions, samples

The palette: Chen et al. cluster RGB values into 512 colours with k-means (9 bits); for
grey images 16 equal bins of the 8-bit range (the value's 4 high bits) keep the shapes and
cut the softmax to 16 ways. The sequence: 784 positions of a 28x28 image cost
784^2 attention per layer, 16 times 14x14's 196^2, and sampling one image takes one
forward pass per position; the reference run downsamples to 14x14 (`--image_size=14`,
as Chen et al. downsample ImageNet to 32x32 and 64x64: iGPT's context is its cost).
"""

import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.evaluation.layer_probes import LAYER_PROBES
from keras_ssl.evaluation.method_evaluations import Evaluation, register_evaluation
from keras_ssl.image_transformers import (heads_option, layers_option, palette_indices, palette_intensities,
                                          pixel_transformer, width_option)
from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register
from keras_ssl.models.vae import to_uint8


@dataclasses.dataclass
class IGPTOptions:
    """iGPT's hyper-parameters. Sources: 16 grey levels (ours: the issue's reduced palette;
    Chen et al. 2020 use 512 k-means colours for RGB); a 4-block Transformer of width 128
    (ours, for CPU; iGPT-S: 24 blocks of 512); sampling temperature 1 (ancestral sampling
    from the model's own distribution)."""

    palette_levels: int = option(16, "grey levels the pixels are reduced to (equal bins of 0..255)",
                                 check=lambda v: 2 <= v <= 256, requirement="in [2, 256]")
    sampling_temperature: float = option(1.0, "the logits are divided by this when sampling (1: the model's "
                                         "distribution)", check=lambda v: v > 0, requirement="> 0")
    transformer_layers: int = layers_option()
    transformer_width: int = width_option()
    transformer_heads: int = heads_option()


def pixel_cross_entropy(logits, indices):
    """-log p(pixel_i | pixels_<i) in nats, float32 `[B, T]`: the categorical cross-entropy of
    the palette `indices` `[B, T]` under `logits` `[B, T, levels]`."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(indices, tf.int32),
                                                          logits=tf.cast(logits, tf.float32))


@keras.saving.register_keras_serializable(package="keras_ssl")
class IGPT(MethodModel):
    """Image GPT (Chen et al. 2020) on grayscale images.

    The `encoder` (`keras_ssl.image_transformers.pixel_transformer`) reads the palette
    indices x_0 .. x_{T-1} of an image (T = H W, raster order) shifted behind a start
    token, through causal Transformer blocks, so its output at position i sees x_<i only;
    the `head` (one Dense layer, untied as iGPT's) gives the `levels` logits of x_i. The
    loss per image is the mean negative log-likelihood per pixel, in nats (the
    autoregressive objective):

        L(x) = -(1/T) sum_i log p(x_i | x_<i)

    Each replica returns `sum(its L) / B_global`, so the sum over replicas is the global
    batch's mean. Metrics: `loss` (nats per pixel), `bits_per_pixel` (`loss / ln 2`, of
    `log2(levels)` bits a pixel) and `accuracy` (top-1 of the next pixel).

    The representation (`predict`, the probes, `serving_default`) is the mean over the
    positions of the last block's normalised output (`features`); the per-block probes
    (`layer_probes`) read each block. `fit()` takes image batches (uint8 or floats in
    [0, 1], one channel); labels are refused. Sampling is ancestral in raster order, one
    forward pass per pixel, by the Gumbel-max trick with noise drawn per seed
    (`stateless_uniform` seeded by `(seed, 0)`): a seed gives the same image whatever else
    is in the batch. Serves `sample(seeds)` and `complete(images, seeds)` (the top half
    given, the bottom half sampled) -> uint8 images in the palette's grey levels.
    """

    SUB_MODELS = ("encoder", "head")
    TRACKED = ("loss", "bits_per_pixel", "accuracy")

    def __init__(self, encoder, sampling_temperature=IGPTOptions.sampling_temperature, head=None, **kwargs):
        super().__init__(**kwargs)
        if not float(sampling_temperature) > 0:
            raise UserError(f"sampling_temperature must be > 0, got {sampling_temperature}")
        self.encoder = encoder
        self.sampling_temperature = float(sampling_temperature)
        self.levels = int(encoder.get_layer("pixel_tokens").levels)
        self.image_shape = tuple(int(d) for d in encoder.input_shape[1:])
        self.positions = self.image_shape[0] * self.image_shape[1]
        width = int(encoder.get_layer("sequence").output.shape[-1])
        if head is None:
            hidden = keras.Input((None, width), name="sequence")
            head = keras.Model(hidden, keras.layers.Dense(self.levels, dtype="float32", name="logits")(hidden),
                               name="head")
        self.head = head
        # the encoder up to its sequence [B, T, D], sharing its layers: kept in a closure, not tracked twice
        sequence = keras.Model(encoder.input, encoder.get_layer("sequence").output, name="sequence_model")
        object.__setattr__(self, "_sequence", lambda images, training=False: sequence(images, training=training))
        object.__setattr__(self, "_compiled", None)  # tf.functions for eager sampling, made when first used
        self.build()

    # -- the autoregressive model ---------------------------------------------------

    def pixel_logits(self, images, training=False):
        """float32 `[B, T, levels]`: position i's logits of x_i, from x_<i."""
        images = self.input_modality().as_model_input(images)
        return tf.cast(self.head(self._sequence(images, training=training), training=training), tf.float32)

    def pixel_nll(self, images, training=False):
        """-log p(x_i | x_<i) per pixel in nats, float32 `[B, T]`."""
        images = tf.convert_to_tensor(images)
        return pixel_cross_entropy(self.pixel_logits(images, training), palette_indices(images, self.levels))

    def method_loss(self, data, training):
        x, y = split_data(data)
        self.refuse_labels_without_probe(y, "learns without labels")
        images = self.checked_inputs(x)
        targets = palette_indices(images, self.levels)
        logits = self.pixel_logits(images, training)
        losses = tf.reduce_mean(pixel_cross_entropy(logits, targets), axis=1)
        n_local = tf.shape(targets)[0]
        n_global = tf.cast(global_batch_size(n_local), tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets), tf.float32)
        weight = tf.cast(n_local, tf.float32)
        mean = tf.reduce_mean(losses)
        for name, value in (("loss", mean), ("bits_per_pixel", mean / math.log(2.0)),
                            ("accuracy", tf.reduce_mean(correct))):
            self.trackers[name].update_state(value, sample_weight=weight)
        return tf.reduce_sum(losses) / n_global

    # -- sampling -----------------------------------------------------------------------

    def _gumbel(self, seeds):
        """Gumbel noise `[B, T, levels]`, each row from its seed."""
        tiny = np.finfo(np.float32).tiny
        return tf.map_fn(lambda s: -tf.math.log(-tf.math.log(tf.random.stateless_uniform(
            [self.positions, self.levels], tf.stack([s, 0]), minval=tiny, maxval=1.0))), seeds,
            fn_output_signature=tf.float32)

    def _fill(self, indices, seeds, start):
        """Palette indices `[B, T]` with positions `start`.. drawn one by one from the model."""
        seeds = tf.cast(tf.reshape(seeds, [-1]), tf.int32)
        gumbel = self._gumbel(seeds)
        (h, w, _), t = self.image_shape, self.positions

        def draw(p, current):
            images = tf.reshape(palette_intensities(current, self.levels), [-1, h, w, 1])
            logits = self.pixel_logits(images)[:, p, :] / self.sampling_temperature
            drawn = tf.argmax(logits + gumbel[:, p, :], axis=-1, output_type=tf.int32)
            here = tf.one_hot(p, t, dtype=tf.int32)[None]
            return p + 1, current * (1 - here) + drawn[:, None] * here

        _, indices = tf.while_loop(lambda p, _: p < t, draw, (tf.cast(start, tf.int32), tf.cast(indices, tf.int32)))
        return tf.ensure_shape(indices, [None, t])

    def _images(self, indices):
        h, w, _ = self.image_shape
        return to_uint8(tf.reshape(palette_intensities(indices, self.levels), [-1, h, w, 1]))

    def _complete(self, images, seeds, given_rows):
        images = self.input_modality().as_model_input(tf.convert_to_tensor(images))
        start = tf.cast(given_rows, tf.int32) * self.image_shape[1]
        return self._images(self._fill(palette_indices(images, self.levels), seeds, start))

    def complete_images(self, images, seeds, given_rows=None):
        """uint8 `[B, H, W, 1]`: each image's first `given_rows` rows (default: the top
        half) in the palette, the rest sampled from the model, seeded by `seeds`."""
        given_rows = self.image_shape[0] // 2 if given_rows is None else int(given_rows)
        if tf.executing_eagerly():
            if self._compiled is None:
                object.__setattr__(self, "_compiled", tf.function(self._complete, input_signature=[
                    tf.TensorSpec([None, *self.image_shape], tf.float32), tf.TensorSpec([None], tf.int32),
                    tf.TensorSpec([], tf.int32)]))
            images = tf.cast(self.input_modality().as_model_input(tf.convert_to_tensor(images)), tf.float32)
            return self._compiled(images, tf.cast(tf.reshape(seeds, [-1]), tf.int32), tf.constant(given_rows))
        return self._complete(images, seeds, given_rows)

    def sample_images(self, seeds):
        """uint8 `[B, H, W, 1]` drawn from the model, one image per seed."""
        seeds = tf.reshape(tf.convert_to_tensor(seeds), [-1])
        blank = tf.zeros(tf.concat([tf.shape(seeds), self.image_shape], 0), tf.float32)
        return self.complete_images(blank, seeds, given_rows=0)

    def serving_endpoints(self, image_shape, threshold=None):
        """The embedding signatures, `sample` (seeds -> uint8 `images`) and `complete`
        (images, seeds -> uint8 `images`, the top half given, the bottom half sampled)."""
        images = ServingOutput("images", "uint8", self.image_shape,
                               f"pixels in the palette's {self.levels} grey levels")
        half = self.image_shape[0] // 2
        return super().serving_endpoints(image_shape, threshold) + [
            Endpoint("sample", (ServingInput("seeds", "seeds"),), (images,),
                     lambda seeds: {"images": self.sample_images(seeds)}),
            Endpoint("complete", (ServingInput("images"), ServingInput("seeds", "seeds")), (images,),
                     lambda x, seeds: {"images": self.complete_images(x, seeds, half)}),
        ]


# -- its evaluation -----------------------------------------------------------------------


def completion_metrics(model, images, path=None, shown=10, seeds=(0, 1, 2), batch_size=500):
    """`test_bits_per_pixel`: the mean -log2 p(x_i | x_<i) over the test images' pixels (in
    the palette: of log2(levels) bits a pixel); with `path`, `completions_plot`: a PNG of
    the first `shown` test images (rows: the image in the palette, its top half, then one
    completion per seed)."""
    from keras_ssl.evaluation.generative import save_image_grid

    score = tf.function(lambda x: tf.reduce_mean(model.pixel_nll(x), axis=1),
                        input_signature=[tf.TensorSpec([None, *images.shape[1:]], tf.as_dtype(images.dtype))])
    nats = np.concatenate([np.asarray(score(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])
    result = {"test_bits_per_pixel": float(np.mean(nats) / math.log(2.0))}
    if path:
        first = images[:shown]
        given = model.image_shape[0] // 2
        palette = np.asarray(model.complete_images(first, np.zeros(len(first), np.int32), model.image_shape[0]))
        top = palette.copy()
        top[:, given:] = 128
        rows = [palette, top] + [np.asarray(model.complete_images(first, np.full(len(first), s, np.int32), given))
                                 for s in seeds]
        result["completions_plot"] = save_image_grid(
            rows, path, f"rows: test image ({model.levels} levels), its top half, completions (seeds {seeds})")
    return result


def _completions(context):
    path = os.path.join(context.model_dir, "completions.png") if context.model_dir else None
    return completion_metrics(context.model, context.dataset.test.images, path)


register_evaluation(LAYER_PROBES)
register_evaluation(Evaluation(
    "completions", "iGPT: test bits per pixel (in the palette) and completions of half-images", _completions,
    ("test_bits_per_pixel",), ("completions_plot",), needs_labels=False))


def _build(run, options, encoder, dataset, stage=None):
    """iGPT with its own `pixel_transformer` at the dataset's image shape (the run's
    `--encoder` is not used)."""
    transformer = pixel_transformer(dataset.image_shape, options.palette_levels, options.transformer_width,
                                    options.transformer_layers, options.transformer_heads, run.width_multiplier)
    return IGPT(transformer, sampling_temperature=options.sampling_temperature)


def _training_data(run, options, split, stage=None):
    """Shuffled uint8 image batches."""
    from keras_ssl.data.views import image_batches

    return TrainingData(image_batches(split, run.batch_size, seed=run.seed), epoch_steps(split, run.batch_size),
                        run.batch_size)


register(Method(
    name="igpt", summary="image GPT: next-pixel prediction over a grey palette, causal Transformer (Chen et al. 2020)",
    options=IGPTOptions, build=_build, training_data=_training_data,
    # Adam with a linear warmup and no weight decay, as Chen et al. 2020; lr 1e-3 for a short CPU
    # run and batch 64 are ours.
    run_defaults=dict(model_dir="runs/igpt", optimizer="adamw", learning_rate=1e-3, lr_scaling="none",
                      warmup_epochs=0.5, weight_decay=0.0, augment="none", batch_size=64),
    evaluations=("probe", "layer_probes", "completions", "samples"),
    smoke_options=dict(augment="none", batch_size=16, transformer_layers=2),
))
