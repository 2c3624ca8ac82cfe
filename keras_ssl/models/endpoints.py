"""What a method model serves: endpoints declared by the model, traced by the exporter.

A model's `serving_endpoints(image_shape, threshold)` returns a list of
`Endpoint`s. Each names its inputs by *kind*; the exporter
(`keras_ssl.export`) checks and decodes every input of a kind the same way,
answers an empty batch with an empty result of the declared output shapes,
writes the warmup request and the signature facts, all from this list.

Input kinds are objects registered by the modalities
(`keras_ssl.modalities.input_kinds`): `image` (encoded PNG/JPEG/GIF/BMP/WebP
files) and `pixels` (uint8 of any size) decode to float32 `[batch, H, W, C]`
in [0, 1]; `wav` (16-bit PCM WAV files at 16 kHz) and `waveform` (float32
samples in [-1, 1]) to float32 `[batch, samples]`, cut or zero-padded to the
model's clip length; `latent` (float32 `[batch, *shape]`) and `seeds` (int
`[batch]`) feed generative endpoints (`decode`, `sample`); `tokens` (int ids)
and `text` (UTF-8 strings, tokenized in the graph) become int32
`[batch, length]` token ids for sequence models. Each kind's docstring gives
its checks.

Outputs are float32, int32, bool, uint8 (decoded images) or string tensors; a
`None` in an output's shape is a dimension that varies between calls.

`input_shape` is `(H, W, C)` for image models and `(samples,)` for audio models.
"""

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class ServingInput:
    """One input tensor of an endpoint: its `name`, `kind` (see the module
    docstring), for images the `(height, width)` it is resized to (None: the
    model's image size), for latents and token ids their `shape` after the
    batch axis, for token ids their `vocabulary_size`, and for text the
    `tokenizer` (a `keras_ssl.tokenizers.WordTokenizer`) that turns it into ids."""

    name: str
    kind: str = "image"
    size: tuple | None = None
    shape: tuple | None = None  # after the batch axis, for kinds that need it (latent: (D,), tokens: (L,))
    vocabulary_size: int | None = None  # tokens
    tokenizer: object = None  # text

    def __post_init__(self):
        from keras_ssl.modalities.input_kinds import input_kind

        input_kind(self.kind).check(self)  # a ValueError naming the registered kinds, or what is missing


@dataclasses.dataclass(frozen=True)
class ServingOutput:
    """One output tensor: `name`, `dtype` ("float32", "int32", "bool", "uint8",
    "string"), its shape after the batch axis (`None` for a dimension that
    varies), and what it means (for the facts file)."""

    name: str
    dtype: str
    shape: tuple = ()
    meaning: str = ""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A serving signature.

    `function(*decoded_inputs) -> {output name: tensor}` gets one batch per
    input, as its kind decodes it (float32 images in [0, 1], waveforms or
    latents, int32 seeds; in the order of `inputs`, all of the same batch size,
    at least 1). `variables` are tracked with the export (e.g. a
    verification threshold) and listed under `variable_collection`.
    `dataset_classes`: the outputs are over the training dataset's classes
    (their names are stored with the export).
    """

    name: str
    inputs: tuple
    outputs: tuple
    function: Callable
    variables: tuple = ()
    variable_collection: str | None = None
    dataset_classes: bool = False


def embedding_endpoints(embed, dim, meaning="the representation, L2-normalised"):
    """`serving_default` (encoded images) and `embed_pixels` (uint8 pixels),
    both -> `embedding` float32 `[batch, dim]` from `embed(images)`."""
    output = (ServingOutput("embedding", "float32", (dim,), meaning),)
    return [Endpoint("serving_default", (ServingInput("images", "image"),), output, lambda x: {"embedding": embed(x)}),
            Endpoint("embed_pixels", (ServingInput("pixels", "pixels"),), output, lambda x: {"embedding": embed(x)})]


def audio_endpoints(outputs, function):
    """`serving_default` (WAV bytes, input `audio`) and `embed_waveforms` (float32
    samples, input `waveforms`), both -> `function(waveforms)`'s `outputs`."""
    return [Endpoint("serving_default", (ServingInput("audio", "wav"),), tuple(outputs), function),
            Endpoint("embed_waveforms", (ServingInput("waveforms", "waveform"),), tuple(outputs), function)]


def classify_endpoint(probabilities, num_classes, meaning, inputs=(ServingInput("images"),), dataset_classes=False,
                      name="classify"):
    """`classify` (or `name`): images -> `probabilities` float32 `[batch, num_classes]`
    and the most likely `class` int32 `[batch]`."""
    import tensorflow as tf

    def function(*images):
        p = tf.cast(probabilities(*images), tf.float32)
        return {"probabilities": p, "class": tf.argmax(p, axis=-1, output_type=tf.int32)}

    return Endpoint(name, tuple(inputs),
                    (ServingOutput("probabilities", "float32", (num_classes,), meaning),
                     ServingOutput("class", "int32", (), "index of the largest probability")),
                    function, dataset_classes=dataset_classes)


def __getattr__(name):
    if name == "INPUT_KINDS":  # deprecated: the registered kinds' names
        from keras_ssl.modalities.input_kinds import input_kind_names

        return input_kind_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
