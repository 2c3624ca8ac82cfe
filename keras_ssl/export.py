"""SavedModel export with serving signatures, versioned and atomic.

Layout: `<export_root>/<name>/<version>/` (TF Serving's: numeric version
folders; it ignores the hidden `.tmp-*` folder the export is written into
before being renamed into place, so a server never sees half an export).

The signatures are the model's declared endpoints
(`MethodModel.serving_endpoints`, see `keras_ssl.models.endpoints`); names
are stable API. Image models serve `serving_default` (encoded images ->
`embedding`, L2-normalised) and `embed_pixels` (uint8 pixels); Siamese/triplet
models add `verify`, models with an online probe `classify`, RotNet `rotation`,
relative position `position`; audio models (CPC) serve `serving_default` on WAV
bytes and `embed_waveforms`; a generative model may serve `sample(seeds)` and
`decode(latent)` and no embedding at all; a sequence model takes `tokens` (int
ids) or `text` (strings tokenized in the graph, the vocabulary an asset). Each input is checked and decoded by
its kind (`keras_ssl.modalities.input_kinds`).

Preprocessing inside the graph is the evaluation preprocessing of training
(images: decode in the file's own channel count, convert to C channels,
bilinear resize to the model's H x W rounded back to uint8, as the dataset
loader does, then `/ 255`; audio: decode, mix to mono, cut or zero-pad to the
clip length). Every signature checks its inputs before the encoder
runs (rank, channels, equal batch sizes, non-empty images, image magic bytes
and end markers, WAV headers as the WAV decoder reads them, waveform range),
refusing a batch in one line that names the signature and the items at fault
(`<signature>: <what is wrong> (indices): [i, j]; <what to do>`), so that no
decoder's own error (which names neither) reaches the client; and it answers
an empty batch with an empty result of the declared shapes: with
oneDNN on, a wrongly shaped tensor reaching a convolution can abort the whole
serving process (SIGABRT, seen with a rank-3 input to a convolution), and
SignatureDef shapes are not enforced: hence `tf.ensure_shape` and the
empty-batch branch.
"""

import json
import os
import shutil

import keras
import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.modalities.image_codec import MAX_PIXELS  # noqa: F401  (the limits, as before)
from keras_ssl.modalities.input_kinds import input_kind
from keras_ssl.modalities.wav_codec import MAX_AUDIO_SECONDS, MAX_WAVEFORM_PEAK  # noqa: F401


def next_version(model_root):
    """1 + the largest numeric version folder under `model_root` (1 if none)."""
    if not os.path.isdir(model_root):
        return 1
    versions = [int(d) for d in os.listdir(model_root) if d.isdigit()]
    return max(versions, default=0) + 1


def _serving_function(endpoint, input_shape):
    """The traced signature of `endpoint`: checks and decodes each input by its
    kind (`keras_ssl.modalities.input_kinds`), calls the endpoint on the decoded
    batches (images in [0, 1], waveforms, ...), and answers an empty batch with
    empty outputs of the declared shapes."""
    names = [spec.name for spec in endpoint.inputs]
    kinds = [input_kind(spec.kind) for spec in endpoint.inputs]
    specs = [kind.spec(spec, input_shape) for kind, spec in zip(kinds, endpoint.inputs)]

    def serve(*tensors):
        checked = []
        for spec, t in zip(specs, tensors):
            # Runtime checks (TF Serving does not enforce the SignatureDef's shapes); the
            # error reads "Shape of tensor <name> [..] is not compatible with expected shape".
            checked.append(tf.ensure_shape(t, spec.shape))
        count = tf.shape(checked[0])[0]
        same_count = [tf.debugging.assert_equal(
            count, tf.shape(t)[0], message=f"{endpoint.name}: {' and '.join(names)} must hold the same number of "
                                           "items") for t in checked[1:]]

        def compute():
            with tf.control_dependencies(same_count):
                decoded = [kind.prepare(t, endpoint.name, input_shape, spec)
                           for kind, spec, t in zip(kinds, endpoint.inputs, checked)]
            out = endpoint.function(*decoded)
            return [_as_declared(out[o.name], o.dtype) for o in endpoint.outputs]

        def empty():  # a varying dimension is 0 here
            with tf.control_dependencies(same_count):
                return [tf.zeros([0, *(d or 0 for d in o.shape)], o.dtype) for o in endpoint.outputs]

        results = tf.cond(count > 0, compute, empty)
        return {o.name: r for o, r in zip(endpoint.outputs, results)}

    return serve, specs


def _as_declared(tensor, dtype):
    """An endpoint's output in its declared dtype: strings as they are; integers saturated
    (a float pixel of 300 serves as 255, not 44, which a plain cast to uint8 gives)."""
    if dtype == "string":
        return tensor
    dtype = tf.as_dtype(dtype)
    tensor = tf.convert_to_tensor(tensor)
    if dtype.is_integer and tensor.dtype.is_floating:
        return tf.saturate_cast(tf.round(tensor), dtype)
    return tf.cast(tensor, dtype)


def _describe_output(output):
    shape = ", ".join(["batch", *("n" if d is None else str(d) for d in output.shape)])
    return f"{output.dtype} [{shape}]" + (f": {output.meaning}" if output.meaning else "")


def _warmup_request(endpoint, input_shape):
    """One small request (a black image, a second of silence, ...: each input kind's
    `warmup_value`) for TF Serving's warmup file."""
    return endpoint.name, {spec.name: input_kind(spec.kind).warmup_value(input_shape, spec)
                           for spec in endpoint.inputs}


def _endpoints(model, input_shape, threshold):
    """The model's declared endpoints; a plain Keras encoder gets the embedding ones."""
    from keras_ssl.models.common import MethodModel
    from keras_ssl.models.endpoints import embedding_endpoints

    if isinstance(model, MethodModel):
        return model.serving_endpoints(input_shape, threshold)
    if threshold is not None:
        raise UserError("a threshold only applies to models with a verify signature (Siamese, triplet)")

    return embedding_endpoints(_normalised(model), int(model.output_shape[-1]))


def _normalised(features):
    """`images -> features(images)` in float32, L2-normalised: what an `embedding` serves."""

    def embed(images):
        return tf.math.l2_normalize(tf.cast(features(images, training=False), tf.float32), axis=-1)

    return embed


def _serving_reading(endpoints, encoder, reading):
    """`endpoints` with the embedding signatures (`serving_default`, `embed_pixels`) serving
    `reading` of the image `encoder` (a probe point as `keras-ssl-evaluate` names it: `block2`,
    its global mean; `block2:grid3`, its map averaged over 3x3 regions), L2-normalised."""
    from keras_ssl.evaluation.classification import feature_model
    from keras_ssl.models.endpoints import embedding_endpoints

    if any(e.name == "verify" for e in endpoints):
        raise UserError(f"a reading ({reading}) would replace the embedding that the verify signature's threshold "
                        "was calibrated on; export this Siamese/triplet model without a reading")
    served = {e.name: e for e in endpoints if e.name in ("serving_default", "embed_pixels")}
    if sorted(served) != ["embed_pixels", "serving_default"] or any(
            [o.name for o in e.outputs] != ["embedding"] for e in served.values()):
        raise UserError(f"a reading ({reading}) is served in place of an image model's embedding; this model's "
                        f"signatures are {sorted(e.name for e in endpoints)}")
    features = feature_model(encoder, reading)  # an unknown block or a map-less grid: one UserError line
    replaced = {e.name: e for e in embedding_endpoints(_normalised(features), int(features.output_shape[-1]),
                                                       f"the encoder's {reading} reading, L2-normalised")}
    return [replaced.get(e.name, e) for e in endpoints]


def export_saved_model(model, export_root="saved_models", name="model", version=None, overwrite=False,
                       config=None, threshold=None, class_names=None, warmup=True, image_shape=None,
                       input_shape=None, reading=None):
    """Exports `model` as a SavedModel under `export_root/name/version`; returns the path.

    Args:
      model: a method model (`keras_ssl.models`): its declared
        `serving_endpoints` become the signatures; or a plain Keras encoder,
        float images in [0, 1] `[B, H, W, C]` -> `[B, D]` (the embedding
        signatures only).
      version: integer version; None picks the next free one.
      overwrite: replace an existing version (otherwise refused).
      config: JSON-serialisable run config stored in `assets.extra/config.json`.
      threshold: decision threshold of `verify` (Siamese/triplet models; None:
        the model's own, and no `verify` for a triplet model without one).
      class_names: names of the dataset's classes, stored with the facts when
        a signature predicts them (SimCLR's online probe).
      warmup: write `assets.extra/tf_serving_warmup_requests` (one request
        per signature) when `tensorflow-serving-api` is installed.
      image_shape: `(H, W, C)` served images are resized to; default the
        encoder's input shape (needed when it is size-agnostic, as
        RelativePosition's encoder, trained on patches).
      input_shape: the same, named for every modality: `(H, W, C)` for image
        models, `(samples,)` (the clip length served) for audio models.
      reading: serve this reading of an image encoder as the `embedding` instead of
        the representation, e.g. `"block2:grid3"` (small_cnn's middle block averaged
        over 3x3 regions, the demo's); recorded in `preprocessing.json`.
    """
    if not name or os.sep in name or name.startswith("."):
        raise UserError(f"export name must be a plain folder name, got {name!r}")
    model_root = os.path.join(export_root, name)
    if os.path.isdir(model_root):
        _clean_after_killed_exports(model_root)  # first: a version it restores is not free
    if version is None:
        version = next_version(model_root)
    if not isinstance(version, int) or version < 1:
        raise UserError(f"export version must be a positive integer, got {version!r}")
    final = os.path.join(model_root, str(version))
    if os.path.exists(final) and not overwrite:
        raise UserError(f"{final} already exists; pick another --version, omit it for the next free one, "
                        "or pass --overwrite")
    from keras_ssl.health import check_model

    check_model(model, "the model to export")  # never ship NaN/Inf weights (batch-norm statistics included)
    encoder = getattr(model, "encoder", model)
    input_shape = input_shape or image_shape
    if input_shape is None:
        if len(encoder.input_shape) != 4 or None in encoder.input_shape[1:]:
            raise UserError(f"the encoder's input shape {encoder.input_shape} does not fix the input size; "
                            "pass input_shape=(H, W, C) for images or (samples,) for audio")
        input_shape = tuple(encoder.input_shape[1:])
    input_shape = tuple(int(d) for d in input_shape)
    endpoints = _endpoints(model, input_shape, threshold)
    if reading is not None:
        endpoints = _serving_reading(endpoints, encoder, reading)
    from keras_ssl import modalities

    # the modality of the inputs the model decodes (generative inputs, latents and seeds, have none)
    named = sorted({input_kind(s.kind).modality for e in endpoints for s in e.inputs} - {None})
    if len(named) > 1:
        raise UserError(f"the model's signatures take inputs of several modalities ({', '.join(named)}); "
                        "export one modality per model")
    modality = modalities.get(named[0]) if named else None
    predicts_classes = [e for e in endpoints if e.dataset_classes]
    if not predicts_classes or (class_names and len(class_names) != predicts_classes[0].outputs[0].shape[0]):
        class_names = None  # names of the dataset's classes: only for a signature that predicts those
    os.makedirs(model_root, exist_ok=True)
    tmp = os.path.join(model_root, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        inputs = [s for e in endpoints for s in e.inputs]
        for resource in {id(t): t for s in inputs for t in input_kind(s.kind).trackables(s)}.values():
            archive.track(resource)  # e.g. a tokenizer's lookup tables and vocabulary asset
        for endpoint in endpoints:
            function, signature = _serving_function(endpoint, input_shape)
            archive.add_endpoint(endpoint.name, function, input_signature=signature)
            if endpoint.variables:
                archive.add_variable_collection(endpoint.variable_collection, list(endpoint.variables))
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        by_name = {e.name: e for e in endpoints}
        verify = by_name.get("verify")
        facts = {
            "signatures": {e.name: {"inputs": {s.name: input_kind(s.kind).describe(input_shape, s)
                                               for s in e.inputs},
                                    "outputs": {o.name: _describe_output(o) for o in e.outputs}}
                           for e in endpoints},
        }
        default = by_name.get("serving_default")
        embedding = next((o for o in default.outputs if o.name == "embedding"), None) if default else None
        if embedding is not None:  # only where an embedding is served
            facts.update(embedding_dim=embedding.shape[0], l2_normalized=True,
                         reading=reading or "representation")
        # float32 in the graph; written with float32's 7 significant digits (0.9, not 0.8999999761)
        facts["threshold"] = float(f"{float(verify.variables[0].numpy()):.7g}") if verify is not None else None
        if modality is not None:
            facts.update(modality.serving_facts(input_shape))
        if predicts_classes:
            facts["class_names"] = list(class_names) if class_names else None
        facts["warmup_requests"] = _write_warmup(tmp, [_warmup_request(e, input_shape) for e in endpoints]) \
            if warmup else None
        with open(os.path.join(extra, "preprocessing.json"), "w") as f:
            json.dump(facts, f, indent=2)
        if config is not None:
            with open(os.path.join(extra, "config.json"), "w") as f:
                json.dump(config, f, indent=2, sort_keys=True, default=str)
        if os.path.exists(final):  # overwrite: swap in, then drop the old one
            old = os.path.join(model_root, f".old-{version}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _clean_after_killed_exports(model_root):
    """What an export killed mid-way left under `model_root`: its hidden
    `.tmp-V-PID` folder is removed; an `.old-V-PID` folder (an overwritten version
    moved aside, the new one not yet in place) is put back as `V` if `V` is missing.
    Folders of live processes are left alone."""
    for entry in os.listdir(model_root):
        kind, _, rest = entry.partition("-")
        version, _, pid = rest.rpartition("-")
        if kind not in (".tmp", ".old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        path = os.path.join(model_root, entry)
        final = os.path.join(model_root, version)
        if kind == ".old" and version.isdigit() and not os.path.exists(final):
            os.rename(path, final)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _write_warmup(export_dir, requests):
    """`requests` into TF Serving's warmup file; the signature names written,
    or None without tensorflow-serving-api."""
    from keras_ssl.serving import serving_api_available, write_warmup

    if not serving_api_available():
        return None
    write_warmup(export_dir, requests)
    return [name for name, _ in requests]
