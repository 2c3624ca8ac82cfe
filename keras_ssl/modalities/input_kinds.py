"""Serving input kinds: what a signature's input is and how it becomes a model batch.

An endpoint (`keras_ssl.models.endpoints.ServingInput`) names each input by its
*kind*; the exporter (`keras_ssl.export`) looks the kind up here and asks it for
the input's `tf.TensorSpec`, the graph ops that check and decode a request into
the batch the endpoint's function takes, a line describing it, and a warmup
value. Each modality registers its kinds (`keras_ssl.modalities.image`: `image`,
`pixels`; `keras_ssl.modalities.audio`: `wav`, `waveform`), and
`keras_ssl.modalities.generative` the kinds of generative endpoints (`latent`,
`seeds`), and `keras_ssl.modalities.token_kinds` those of sequence models
(`tokens`, `text`); a new kind is one more `InputKind` subclass.

Every refusal is one line that names the signature and the items at fault,
`<signature>: <what is wrong> (indices): [i, j]; <what to do>` (`refuse`), so
no decoder's own error, which names neither, reaches a client.
"""

import tensorflow as tf

_KINDS = {}


class InputKind:
    """One kind of serving input.

    Attributes: `name` (what `ServingInput.kind` says), `modality` (the
    `keras_ssl.modalities` name whose model inputs it decodes to; None for the
    generative kinds, `latent` and `seeds`, which any modality may serve),
    `encoded` (a string tensor of files, e.g. PNG or WAV bytes, rather than a
    dense one). Every method gets `input_shape`, the model's example shape after
    the batch axis (`(H, W, C)` for images, `(samples,)` for audio), and the
    endpoint's `serving_input` (`keras_ssl.models.endpoints.ServingInput`: its
    name, and where a kind needs them its image `size` or its `shape`).
    """

    name = None
    modality = None
    encoded = False

    def check(self, serving_input):
        """A ValueError when an endpoint declares `serving_input` without what this
        kind needs (e.g. a latent's shape)."""

    def trackables(self, serving_input):
        """What the export must hold besides the model for this input (e.g. a
        tokenizer's lookup tables and vocabulary asset); none by default."""
        return []

    def spec(self, serving_input, input_shape):
        """The input's `tf.TensorSpec` (named after the input)."""
        raise NotImplementedError

    def prepare(self, tensor, endpoint_name, input_shape, serving_input):
        """Graph ops: the checked request `tensor` -> the batch the endpoint's function
        takes; a bad item fails with a `refuse` line."""
        raise NotImplementedError

    def describe(self, input_shape, serving_input):
        """One line for the export's facts file (`preprocessing.json`)."""
        raise NotImplementedError

    def warmup_value(self, input_shape, serving_input):
        """A one-item request value for TF Serving's warmup file."""
        raise NotImplementedError

    def request_value(self, examples, input_shape, serving_input):
        """What a client sends for `examples` (the modality's model inputs, e.g. uint8
        images or float waveforms; for generative kinds only their count matters: a
        fixed set of latents or seeds): encoded files or a dense batch."""
        raise NotImplementedError

    def function_input(self, examples, input_shape, serving_input):
        """What the endpoint's function receives for `request_value(examples, ...)`
        (decoded, resized, scaled), computed in memory: the reference a test compares
        the served outputs with."""
        raise NotImplementedError

    def bad_value(self, examples, input_shape, serving_input):
        """A request value to refuse: its item at index 1 bad (a damaged file, a value out of range),
        or the whole of the wrong rank or channel count."""
        raise NotImplementedError


def register_input_kind(kind):
    if kind.name in _KINDS and type(_KINDS[kind.name]) is not type(kind):
        raise ValueError(f"input kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def input_kind(name):
    """The registered `InputKind` called `name` (ValueError if none)."""
    import keras_ssl.modalities  # noqa: F401  (each modality registers its kinds)

    if name not in _KINDS:
        raise ValueError(f"input kind must be one of {', '.join(_KINDS)}, got {name!r}")
    return _KINDS[name]


def input_kind_names():
    import keras_ssl.modalities  # noqa: F401

    return tuple(_KINDS)


def refuse(bad, what, fix, values=None, values_name=""):
    """An assert op that fails when any item of `bad` (bool [B]) is set, with the one-line message
    `<what> (indices): [i, j]; <fix>` (`what` starts with the signature's name); `values` ([B], e.g.
    the sample rates) adds `(<values_name>: [..])` for the items at fault. (No quote characters in
    the text: the assert prints them escaped.)"""
    at = tf.where(bad)[:, 0]

    def listed(t):
        return tf.strings.join(["[", tf.strings.reduce_join(tf.strings.as_string(t), separator=", "), "]"])

    parts = [f"{what} (indices): ", listed(at)]
    if values is not None:
        parts += [f" ({values_name}: ", listed(tf.gather(values, at)), ")"]
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [tf.strings.join(parts + [f"; {fix}"])])


def in_order(*refusals):
    """The assert ops of `refusals` (callables making one each), each run after the previous one:
    the first that fails is reported, whatever the scheduling."""
    ops = []
    for make in refusals:
        with tf.control_dependencies(ops[-1:]):
            ops.append(make())
    return ops


def contains(data, part):
    """bool [B]: `part` occurs in the item (a byte search: tf.strings.split works on bytes)."""
    return tf.strings.split(data, sep=part, maxsplit=1).row_lengths() > 1


def read_uint(padded, size, offset, count, big_endian=False):
    """int64 [B]: the unsigned `count`-byte (1-4) integer at `offset` ([B] int64) of each item; 0 past
    the end. `padded` is the items with 4 zero bytes appended, `size` their lengths."""
    pos = tf.minimum(offset, size)
    raw = tf.io.decode_raw(tf.strings.substr(padded, pos, tf.fill(tf.shape(pos), tf.constant(4, tf.int64))),
                           tf.uint8)
    raw = tf.cast(raw[:, :count], tf.int64)
    weights = 256 ** tf.range(count, dtype=tf.int64)
    return tf.reduce_sum(raw * (weights[::-1] if big_endian else weights), axis=1)
