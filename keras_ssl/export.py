"""SavedModel export with serving signatures, versioned and atomic.

Layout: `<export_root>/<name>/<version>/` (TF Serving's: numeric version
folders; it ignores the hidden `.tmp-*` folder the export is written into
before being renamed into place, so a server never sees half an export).

The signatures are the model's declared endpoints
(`MethodModel.serving_endpoints`, see `keras_ssl.models.endpoints`); names
are stable API. Every model serves

* `serving_default`: `images` tf.string `[batch]` of encoded PNG/JPEG/GIF/BMP/WebP
  (what TF Serving's REST API sends as `{"b64": ...}`) -> `embedding` float32
  `[batch, D]`, L2-normalised;
* `embed_pixels`: `pixels` uint8 `[batch, H, W, C]` (any H, W) -> `embedding`;

Siamese/triplet models add `verify`; models with an online probe (SimCLR,
RotNet on labelled data) add `classify` (the dataset's classes); RotNet adds
`rotation`, relative position `position` (its pretext heads).

Preprocessing inside the graph is the evaluation preprocessing of training:
decode in the file's own channel count, convert to C channels, bilinear
resize to the model's H x W (rounded back to uint8, as the dataset loader
does), then `/ 255`. Every signature checks its inputs before the encoder
runs (rank, channels, equal batch sizes, non-empty images, image magic bytes)
and answers an empty batch with an empty result of the declared shapes: with
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

from keras_ssl.data.sources import resize_uint8
from keras_ssl.errors import UserError

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def next_version(model_root):
    """1 + the largest numeric version folder under `model_root` (1 if none)."""
    if not os.path.isdir(model_root):
        return 1
    versions = [int(d) for d in os.listdir(model_root) if d.isdigit()]
    return max(versions, default=0) + 1


def _is_image(data):
    """bool [batch]: the bytes start like a PNG, JPEG, GIF, BMP or WebP file."""
    ok = tf.zeros(tf.shape(data), tf.bool)
    # substr fails on a position past the end: pad so items shorter than 12 bytes are just "not an image"
    data = tf.strings.join([data, tf.fill(tf.shape(data), b"\0" * 12)])
    for magic in _MAGIC:
        ok |= tf.equal(tf.strings.substr(data, 0, len(magic)), magic)
    webp = tf.equal(tf.strings.substr(data, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(data, 8, 4), b"WEBP")
    return ok | webp


def _to_channels(image, channels):
    """uint8 [h, w, n] as decoded (n = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA; GIF is
    always RGB) -> [h, w, channels]: alpha dropped, gray repeated for RGB, RGB to
    gray with the ITU-R 601-2 luma L = 0.299 R + 0.587 G + 0.114 B rounded (the
    formula of Pillow's `convert("L")` in the folder loader, which rounds in fixed
    point: values may differ by 1)."""
    n = tf.shape(image)[-1]
    colour = n >= 3
    if channels == 3:
        rgb = tf.cond(colour, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
        return tf.ensure_shape(rgb, [None, None, 3])

    def luma():
        weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
        grey = tf.round(tf.reduce_sum(tf.cast(image[..., :3], tf.float32) * weights, axis=-1, keepdims=True))
        return tf.cast(tf.clip_by_value(grey, 0.0, 255.0), tf.uint8)

    return tf.ensure_shape(tf.cond(colour, luma, lambda: image[..., :1]), [None, None, 1])


# Largest image served, in pixels (25 megapixels: 5000 x 5000; a 4000 x 4000 photo passes).
# Checked on the size the file declares, before decoding: a 389 KB PNG of 20000 x 20000
# would otherwise cost about 2 GB of memory to decode and resize.
MAX_PIXELS = 25_000_000


def _declared_pixels(data):
    """height x width as the file's header declares it (PNG, GIF, BMP, JPEG, WebP), int64."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(tf.strings.join([data, b"\0" * 32]), 0, 32), tf.uint8),
                  tf.int64)

    def le(start, count):  # little-endian unsigned integer
        return tf.add_n([raw[start + i] * (256 ** i) for i in range(count)])

    def be(start, count):
        return tf.add_n([raw[start + i] * (256 ** (count - 1 - i)) for i in range(count)])

    head = tf.strings.substr(data, 0, 4)
    chunk = tf.strings.substr(tf.strings.join([data, b"\0" * 16]), 12, 4)
    png = be(16, 4) * be(20, 4)
    gif = le(6, 2) * le(8, 2)
    bmp_height = le(22, 4)
    bmp = le(18, 4) * tf.where(bmp_height >= 2 ** 31, 2 ** 32 - bmp_height, bmp_height)  # top-down: negative
    vp8 = (le(26, 2) % 16384) * (le(28, 2) % 16384)
    vp8l = (1 + raw[21] + (raw[22] % 64) * 256) * (1 + raw[22] // 64 + raw[23] * 4 + (raw[24] % 16) * 1024)
    vp8x = (1 + le(24, 3)) * (1 + le(27, 3))
    jpeg = tf.cond(tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"),
                   lambda: tf.reduce_prod(tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)),
                   lambda: tf.constant(0, tf.int64))
    webp = tf.where(tf.equal(chunk, b"VP8 "), vp8, tf.where(tf.equal(chunk, b"VP8L"), vp8l,
                                                            tf.where(tf.equal(chunk, b"VP8X"), vp8x, 0)))
    return tf.where(tf.equal(head, b"\x89PNG"), png,
                    tf.where(tf.equal(tf.strings.substr(data, 0, 3), b"GIF"), gif,
                             tf.where(tf.equal(tf.strings.substr(data, 0, 2), b"BM"), bmp,
                                      tf.where(tf.equal(head, b"RIFF"), webp, jpeg))))


def _decode_images(images, name, height, width, channels):
    """string [B] -> uint8 [B, height, width, channels], after checking every item is an
    image of at most MAX_PIXELS."""
    valid = _is_image(images)
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [f"{name}: these items are not PNG/JPEG/GIF/BMP/WebP images (indices):",
         tf.reshape(tf.where(tf.logical_not(valid)), [-1])])

    def decode(data):
        pixels = _declared_pixels(data)
        too_big = tf.debugging.Assert(pixels <= MAX_PIXELS, [
            f"{name}: an image declares more than {MAX_PIXELS // 1_000_000} megapixels; send it smaller "
            "(pixels declared:", pixels, ")"])
        with tf.control_dependencies([too_big]):
            # channels=0: every format in its own channel count (asking GIF for 1 channel fails)
            img = tf.io.decode_image(data, channels=0, expand_animations=False)
        return resize_uint8(_to_channels(img, channels), height, width)

    with tf.control_dependencies([check]):
        return tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))


def _resize_pixels(pixels, name, height, width):
    """uint8 [B, h, w, C] of any size >= 1 -> uint8 [B, height, width, C]."""
    with tf.control_dependencies([tf.debugging.assert_positive(
            tf.shape(pixels)[1:3], message=f"{name}: images must have height and width >= 1")]):
        return resize_uint8(pixels, height, width)


# Longest audio served (a guard on memory); longer input is refused, not cut.
MAX_AUDIO_SECONDS = 60
_WAV_RATE = 16000


def _input_spec(spec, input_shape):
    if spec.kind in ("image", "wav"):
        return tf.TensorSpec([None], tf.string, name=spec.name)
    if spec.kind == "waveform":
        return tf.TensorSpec([None, None], tf.float32, name=spec.name)
    return tf.TensorSpec([None, None, None, input_shape[-1]], tf.uint8, name=spec.name)


def _fit_length(waveform, num_samples):
    """float32 [n] -> [num_samples]: cut, or zero-padded at the end (the audio loader's rule)."""
    waveform = waveform[:num_samples]
    return tf.pad(waveform, [[0, num_samples - tf.shape(waveform)[0]]])


def _check_waveform_length(n, name):
    return [tf.debugging.assert_positive(n, message=f"{name}: empty audio (no samples)"),
            tf.debugging.assert_less_equal(n, MAX_AUDIO_SECONDS * _WAV_RATE, message=(
                f"{name}: audio longer than {MAX_AUDIO_SECONDS} s at 16 kHz; send it in shorter pieces"))]


def _decode_wavs(wavs, name, num_samples):
    """string [B] WAV files -> float32 [B, num_samples] 16 kHz mono, after checking
    each is a RIFF/WAVE file at 16 kHz, not empty and not too long."""
    padded = tf.strings.join([wavs, tf.fill(tf.shape(wavs), b"\0" * 36)])
    valid = tf.equal(tf.strings.substr(padded, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(padded, 8, 4), b"WAVE")
    # Where the "fmt " chunk comes first (the usual layout), its format code (1 = PCM) and
    # bits per sample are read here, so 8/24/32-bit and float WAVs get a message that says
    # what to do rather than the decoder's own (which names neither the item nor a fix).
    fmt_first = tf.equal(tf.strings.substr(padded, 12, 4), b"fmt ")
    format_code = tf.strings.substr(padded, 20, 2)
    pcm16 = tf.equal(format_code, b"\x01\x00") & tf.equal(tf.strings.substr(padded, 34, 2), b"\x10\x00")
    extensible = valid & fmt_first & tf.equal(format_code, b"\xfe\xff")
    other_format = valid & fmt_first & tf.logical_not(pcm16) & tf.logical_not(extensible)
    check = tf.debugging.Assert(tf.reduce_all(valid), [
        f"{name}: these items are not WAV files (16-bit PCM, RIFF/WAVE) (indices):",
        tf.reshape(tf.where(tf.logical_not(valid)), [-1])])
    check_format = tf.debugging.Assert(tf.logical_not(tf.reduce_any(other_format)), [
        f"{name}: these WAV files are not 16-bit PCM (8/24/32-bit or float samples); the model is served "
        "16-bit PCM, e.g. sox in.wav -b 16 -e signed-integer out.wav (indices):",
        tf.reshape(tf.where(other_format), [-1])])
    check_header = tf.debugging.Assert(tf.logical_not(tf.reduce_any(extensible)), [
        f"{name}: these WAV files have a WAVE_FORMAT_EXTENSIBLE header, which the decoder does not read; "
        "rewrite them as plain 16-bit PCM, mono or stereo, e.g. sox in.wav -b 16 -c 1 out.wav (indices):",
        tf.reshape(tf.where(extensible), [-1])])

    def decode(data):
        audio, rate = tf.audio.decode_wav(data)  # float32 [n, channels] in [-1, 1]
        right_rate = tf.debugging.assert_equal(rate, _WAV_RATE, message=(
            f"{name}: the model takes 16 kHz audio; resample the WAV to 16000 Hz (sample rate given:"))
        with tf.control_dependencies([right_rate, *_check_waveform_length(tf.shape(audio)[0], name)]):
            return _fit_length(tf.reduce_mean(audio, axis=1), num_samples)

    with tf.control_dependencies([check, check_format, check_header]):
        return tf.map_fn(decode, wavs, fn_output_signature=tf.TensorSpec([num_samples], tf.float32))


def _prepare_waveforms(waveforms, name, num_samples):
    """float32 [B, n] -> [B, num_samples] after checking n and that every sample is finite."""
    checks = _check_waveform_length(tf.shape(waveforms)[1], name) + [
        tf.debugging.assert_all_finite(waveforms, f"{name}: waveforms hold NaN or Inf")]
    with tf.control_dependencies(checks):
        return tf.map_fn(lambda w: _fit_length(w, num_samples), waveforms,
                         fn_output_signature=tf.TensorSpec([num_samples], tf.float32))


def _decode_input(spec, t, endpoint_name, input_shape):
    """One checked input tensor -> the float32 batch the endpoint function takes."""
    if spec.kind == "wav":
        return _decode_wavs(t, endpoint_name, input_shape[0])
    if spec.kind == "waveform":
        return _prepare_waveforms(t, endpoint_name, input_shape[0])
    height, width, channels = input_shape
    h, w = spec.size or (height, width)
    pixels = (_decode_images(t, endpoint_name, h, w, channels) if spec.kind == "image"
              else _resize_pixels(t, endpoint_name, h, w))
    return tf.cast(pixels, tf.float32) / 255.0


def _serving_function(endpoint, input_shape):
    """The traced signature of `endpoint`: checks and decodes each input by its
    kind, calls the endpoint on the decoded batches (images in [0, 1] or
    waveforms), and answers an empty batch with empty outputs of the declared
    shapes."""
    names = [spec.name for spec in endpoint.inputs]
    specs = [_input_spec(spec, input_shape) for spec in endpoint.inputs]

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
                decoded = [_decode_input(spec, t, endpoint.name, input_shape)
                           for spec, t in zip(endpoint.inputs, checked)]
            out = endpoint.function(*decoded)
            return [tf.cast(out[o.name], o.dtype) for o in endpoint.outputs]

        def empty():
            with tf.control_dependencies(same_count):
                return [tf.zeros([0, *o.shape], o.dtype) for o in endpoint.outputs]

        results = tf.cond(count > 0, compute, empty)
        return {o.name: r for o, r in zip(endpoint.outputs, results)}

    return serve, specs


def _describe_input(spec, input_shape):
    if spec.kind == "wav":
        return (f"string [batch] 16-bit PCM WAV files at 16 kHz, at most {MAX_AUDIO_SECONDS} s; mixed to mono, "
                f"cut or zero-padded to {input_shape[0]} samples")
    if spec.kind == "waveform":
        return (f"float32 [batch, n] 16 kHz mono samples in [-1, 1] (1 <= n <= {MAX_AUDIO_SECONDS * _WAV_RATE}), "
                f"cut or zero-padded to {input_shape[0]}")
    channels = input_shape[-1]
    if spec.kind == "pixels":
        return f"uint8 [batch, H, W, {channels}] (any H, W >= 1)"
    size = f" (resized to {spec.size[0]}x{spec.size[1]})" if spec.size else ""
    return f"string [batch] encoded PNG/JPEG/GIF/BMP/WebP, at most {MAX_PIXELS // 1_000_000} megapixels{size}"


def _describe_output(output):
    shape = ", ".join(["batch", *map(str, output.shape)])
    return f"{output.dtype} [{shape}]" + (f": {output.meaning}" if output.meaning else "")


def _warmup_request(endpoint, input_shape):
    """One small request (a black image, or a second of silence, per input) for
    TF Serving's warmup file."""
    inputs = {}
    for spec in endpoint.inputs:
        if spec.kind == "wav":
            inputs[spec.name] = [tf.audio.encode_wav(tf.zeros([input_shape[0], 1]), _WAV_RATE).numpy()]
            continue
        if spec.kind == "waveform":
            inputs[spec.name] = tf.zeros([1, input_shape[0]], tf.float32).numpy()
            continue
        height, width, channels = input_shape
        h, w = spec.size or (height, width)
        if spec.kind == "image":
            inputs[spec.name] = [tf.io.encode_png(tf.zeros([h, w, channels], tf.uint8)).numpy()]
        else:
            inputs[spec.name] = tf.zeros([1, h, w, channels], tf.uint8).numpy()
    return endpoint.name, inputs


def _endpoints(model, image_shape, threshold):
    """The model's declared endpoints; a plain Keras encoder gets the embedding ones."""
    from keras_ssl.models.common import MethodModel
    from keras_ssl.models.endpoints import embedding_endpoints

    if isinstance(model, MethodModel):
        return model.serving_endpoints(image_shape, threshold)
    if threshold is not None:
        raise UserError("a threshold only applies to models with a verify signature (Siamese, triplet)")

    def embed(images):
        return tf.math.l2_normalize(tf.cast(model(images, training=False), tf.float32), axis=-1)

    return embedding_endpoints(embed, int(model.output_shape[-1]))


def export_saved_model(model, export_root="saved_models", name="model", version=None, overwrite=False,
                       config=None, threshold=None, class_names=None, warmup=True, image_shape=None,
                       input_shape=None):
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
    image_shape = input_shape or image_shape
    if image_shape is None:
        if len(encoder.input_shape) != 4 or None in encoder.input_shape[1:]:
            raise UserError(f"the encoder's input shape {encoder.input_shape} does not fix the input size; "
                            "pass input_shape=(H, W, C) for images or (samples,) for audio")
        image_shape = tuple(encoder.input_shape[1:])
    image_shape = tuple(int(d) for d in image_shape)
    endpoints = _endpoints(model, image_shape, threshold)
    audio = any(spec.audio for e in endpoints for spec in e.inputs)
    predicts_classes = [e for e in endpoints if e.dataset_classes]
    if not predicts_classes or (class_names and len(class_names) != predicts_classes[0].outputs[0].shape[0]):
        class_names = None  # names of the dataset's classes: only for a signature that predicts those
    os.makedirs(model_root, exist_ok=True)
    tmp = os.path.join(model_root, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for endpoint in endpoints:
            function, signature = _serving_function(endpoint, image_shape)
            archive.add_endpoint(endpoint.name, function, input_signature=signature)
            if endpoint.variables:
                archive.add_variable_collection(endpoint.variable_collection, list(endpoint.variables))
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        by_name = {e.name: e for e in endpoints}
        verify = by_name.get("verify")
        facts = {
            "signatures": {e.name: {"inputs": {s.name: _describe_input(s, image_shape) for s in e.inputs},
                                    "outputs": {o.name: _describe_output(o) for o in e.outputs}}
                           for e in endpoints},
            "embedding_dim": by_name["serving_default"].outputs[0].shape[0],
            "l2_normalized": True,
            # float32 in the graph; written with float32's 7 significant digits (0.9, not 0.8999999761)
            "threshold": float(f"{float(verify.variables[0].numpy()):.7g}") if verify is not None else None,
        }
        if audio:
            facts.update(sample_rate=_WAV_RATE, num_samples=image_shape[0], preprocessing=(
                "decode 16-bit PCM WAV (16 kHz only) -> mono (mean of the channels) -> cut or zero-pad to "
                f"{image_shape[0]} samples"))
        else:
            facts.update(image_height=image_shape[0], image_width=image_shape[1], channels=image_shape[2],
                         preprocessing="decode -> convert to C channels -> bilinear resize to HxW (rounded to "
                                       "uint8) -> / 255")
        if predicts_classes:
            facts["class_names"] = list(class_names) if class_names else None
        facts["warmup_requests"] = _write_warmup(tmp, [_warmup_request(e, image_shape) for e in endpoints]) \
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
