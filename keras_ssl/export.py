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

from keras_ssl.data.sources import resize_uint8
from keras_ssl.errors import UserError

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def _refuse(bad, what, fix, values=None, values_name=""):
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


def _in_order(*refusals):
    """The assert ops of `refusals` (callables making one each), each run after the previous one:
    the first that fails is reported, whatever the scheduling."""
    ops = []
    for make in refusals:
        with tf.control_dependencies(ops[-1:]):
            ops.append(make())
    return ops


def _contains(data, part):
    """bool [B]: `part` occurs in the item (a byte search: tf.strings.split works on bytes)."""
    return tf.strings.split(data, sep=part, maxsplit=1).row_lengths() > 1


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


_JPEG_MAX_SEGMENTS = 64  # marker segments walked to a JPEG's first scan (a photo has about 10-20)


def _uint(padded, size, offset, count, big_endian=False):
    """int64 [B]: the unsigned `count`-byte (1-4) integer at `offset` ([B] int64) of each item; 0 past
    the end. `padded` is the items with 4 zero bytes appended, `size` their lengths."""
    pos = tf.minimum(offset, size)
    raw = tf.io.decode_raw(tf.strings.substr(padded, pos, tf.fill(tf.shape(pos), tf.constant(4, tf.int64))),
                           tf.uint8)
    raw = tf.cast(raw[:, :count], tf.int64)
    weights = 256 ** tf.range(count, dtype=tf.int64)
    return tf.reduce_sum(raw * (weights[::-1] if big_endian else weights), axis=1)


def _jpeg_scan_start(images, size, jpeg):
    """int64 [B]: where each JPEG's first scan (its SOS marker, FF DA) starts, found by walking the
    marker segments from the SOI as a decoder does (fill bytes FF, standalone markers, then
    2-byte big-endian lengths); the item's length where a segment runs past the end (cut in its
    headers); 2 where the walk finds no marker or gives up (search the whole file). Items not
    `jpeg` get their length."""
    padded = tf.strings.join([images, tf.fill(tf.shape(images), b"\0" * 4)])

    def walk(i, offset, start):
        walking = start < 0
        marker = _uint(padded, size, offset + 1, 1)
        standalone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8))
        one, two, none = (tf.fill(tf.shape(offset), tf.constant(v, tf.int64)) for v in (1, 2, -1))
        step = tf.where(marker == 0xFF, one, tf.where(standalone, two, 2 + _uint(padded, size, offset + 2, 2, True)))
        found = tf.where(offset >= size, size, tf.where(
            _uint(padded, size, offset, 1) != 0xFF, two, tf.where(marker == 0xDA, offset, none)))
        return i + 1, tf.where(walking & (found < 0), offset + step, offset), tf.where(walking, found, start)

    _, _, start = tf.while_loop(
        lambda i, offset, start: (i < _JPEG_MAX_SEGMENTS) & tf.reduce_any(start < 0), walk,
        [tf.constant(0), tf.fill(tf.shape(size), tf.constant(2, tf.int64)),
         tf.where(jpeg, tf.fill(tf.shape(size), tf.constant(-1, tf.int64)), size)])
    return tf.where(start < 0, tf.fill(tf.shape(start), tf.constant(2, tf.int64)), start)


def _truncated(images):
    """bool [B]: the file ends before its end, as the decoder would find out: a PNG without its
    complete IEND chunk (IEND and its 4-byte CRC), a JPEG with no end-of-image marker (FF D9)
    after its first scan (a thumbnail's own marker, in the EXIF header before it, does not
    count), a WebP shorter than its RIFF header declares. The decoder refuses all of these
    (trailing bytes after the end are fine, as for the decoder)."""
    size = tf.cast(tf.strings.length(images), tf.int64)
    png = tf.equal(tf.strings.substr(images, 0, 8), _MAGIC[0])
    before_crc = tf.strings.substr(images, tf.zeros_like(size), tf.maximum(size - 4, 0))
    png_cut = png & tf.logical_not(_contains(before_crc, b"IEND"))
    jpeg = tf.equal(tf.strings.substr(images, 0, 3), _MAGIC[1])
    scan = _jpeg_scan_start(images, size, jpeg)
    jpeg_cut = jpeg & tf.logical_not(_contains(tf.strings.substr(images, scan, size - scan), b"\xff\xd9"))
    padded = tf.strings.join([images, tf.fill(tf.shape(images), b"\0" * 12)])
    webp = tf.equal(tf.strings.substr(padded, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP")
    webp_cut = webp & (size < 8 + _uint(padded, size, tf.fill(tf.shape(size), tf.constant(4, tf.int64)), 4))
    return png_cut | jpeg_cut | webp_cut


def _decode_images(images, name, height, width, channels):
    """string [B] -> uint8 [B, height, width, channels], after checking every item is an
    image (magic bytes), not truncated (end markers, see `_truncated`) and of at most
    MAX_PIXELS."""
    valid = _is_image(images)
    checks = _in_order(
        lambda: _refuse(tf.logical_not(valid), f"{name}: these items are not PNG/JPEG/GIF/BMP/WebP images",
                        "send the encoded file's bytes"),
        lambda: _refuse(valid & _truncated(images), f"{name}: these images are truncated (the file ends before "
                        "its end marker)", "send the whole file"))
    with tf.control_dependencies(checks):
        pixels = tf.map_fn(_declared_pixels, images, fn_output_signature=tf.int64)
    checks.append(_refuse(pixels > MAX_PIXELS, f"{name}: these images declare more than "
                          f"{MAX_PIXELS // 1_000_000} megapixels", "send them smaller", pixels, "pixels declared"))

    def decode(data):
        # channels=0: every format in its own channel count (asking GIF for 1 channel fails)
        img = tf.io.decode_image(data, channels=0, expand_animations=False)
        return resize_uint8(_to_channels(img, channels), height, width)

    with tf.control_dependencies(checks):
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


# Chunks tf.audio.decode_wav skips between "WAVE" and "fmt " (TF's wav_io.cc); any other one there
# (LIST metadata, say) stops it.
_WAV_SKIPPED_BEFORE_FMT = (b"JUNK", b"bext", b"iXML", b"qlty", b"mext", b"levl", b"link", b"axml")
_WAV_MAX_CHUNKS = 64  # chunks walked before and after "fmt " (a WAV has a handful); more: refused as damaged
_WAVE_FORMAT_PCM, _WAVE_FORMAT_EXTENSIBLE = 1, 0xFFFE


def _wav_headers(wavs):
    """Each item's RIFF/WAVE header read as tf.audio.decode_wav reads it (TF's wav_io.cc), in graph
    ops over the batch, so that every file the decoder would refuse is known, by index, before it
    runs. Returns a dict of [B] tensors, one verdict per item, first that applies:

    * `not_wav`: no "RIFF" size "WAVE" at the start;
    * `damaged`: the file ends inside a chunk the decoder skips before "fmt " (JUNK, ...) or inside
      the format fields;
    * `chunk_order`: a chunk before "fmt " the decoder does not skip (LIST metadata, say);
    * `extensible`: format tag WAVE_FORMAT_EXTENSIBLE; `not_pcm16`: not 16-bit integer PCM;
    * `damaged` too: a format chunk size other than 16 or 18, no channels, a sample rate of 0,
      block align or byte rate contradicting the rest; after "fmt ": a chunk header cut short, a
      chunk over 2 GB, a data chunk declaring more samples than the bytes sent, two data chunks,
      none, or more than _WAV_MAX_CHUNKS chunks before or after "fmt ";

    and `rate` (the sample rate), `frames` (the samples per channel the decoder will return)."""
    size = tf.cast(tf.strings.length(wavs), tf.int64)
    padded = tf.strings.join([wavs, tf.fill(tf.shape(wavs), b"\0" * 12)])

    def tag(offset):  # the 4 bytes at offset (zeros past the end)
        four = tf.fill(tf.shape(offset), tf.constant(4, tf.int64))
        return tf.strings.substr(padded, tf.minimum(offset, size), four)

    def uint(offset, count):
        return _uint(padded, size, offset, count)

    def at(value):
        return tf.fill(tf.shape(size), tf.constant(value, tf.int64))

    riff = (size >= 12) & tf.equal(tag(at(0)), b"RIFF") & tf.equal(tag(at(8)), b"WAVE")

    # Walk to "fmt ". state: 0 walking, 1 at "fmt ", 2 cut short, 3 a chunk the decoder does not skip.
    def to_fmt(i, offset, state):
        chunk = tag(offset)
        skipped = tf.reduce_any(tf.stack([tf.equal(chunk, c) for c in _WAV_SKIPPED_BEFORE_FMT]), axis=0)
        following = offset + 8 + uint(offset + 4, 4)
        found = tf.where(offset + 4 > size, at(2), tf.where(tf.equal(chunk, b"fmt "), at(1), tf.where(
            tf.logical_not(skipped), at(3), tf.where((offset + 8 > size) | (following > size), at(2), at(0)))))
        walking = tf.equal(state, 0)
        return i + 1, tf.where(walking & tf.equal(found, 0), following, offset), tf.where(walking, found, state)

    _, fmt, state = tf.while_loop(
        lambda i, offset, state: (i < _WAV_MAX_CHUNKS) & tf.reduce_any(tf.equal(state, 0)), to_fmt,
        [tf.constant(0), at(12), tf.where(riff, at(0), at(-1))])
    fields_sent = tf.equal(state, 1) & (fmt + 24 <= size)  # "fmt ", its size and its 16 bytes of fields
    fmt_size, format_code, channels = uint(fmt + 4, 4), uint(fmt + 8, 2), uint(fmt + 10, 2)
    rate, byte_rate, block, bits = uint(fmt + 12, 4), uint(fmt + 16, 4), uint(fmt + 20, 2), uint(fmt + 22, 2)
    extensible = fields_sent & tf.equal(format_code, _WAVE_FORMAT_EXTENSIBLE)
    not_pcm16 = fields_sent & tf.logical_not(extensible) & (
        tf.not_equal(format_code, _WAVE_FORMAT_PCM) | tf.not_equal(bits, 16))
    pcm16 = fields_sent & tf.equal(format_code, _WAVE_FORMAT_PCM) & tf.equal(bits, 16)
    fields_wrong = pcm16 & ((tf.not_equal(fmt_size, 16) & tf.not_equal(fmt_size, 18)) | tf.equal(channels, 0) |
                            tf.equal(rate, 0) | tf.not_equal(block, 2 * channels) |
                            tf.not_equal(byte_rate, block * rate))
    readable = pcm16 & tf.logical_not(fields_wrong)

    # The chunks after "fmt ", to the end, as the decoder walks them (it advances past a data
    # chunk by the samples it reads, past any other by its declared size).
    def after_fmt(i, offset, walking, bad, found, frames):
        chunk_size = uint(offset + 4, 4)
        data = tf.equal(tag(offset), b"data")
        chunk_frames = chunk_size // tf.maximum(block, 1)
        data_bytes = chunk_frames * channels * 2
        error = (offset + 8 > size) | (chunk_size > 2 ** 31 - 1) | data & (found | (offset + 8 + data_bytes > size))
        ok = walking & tf.logical_not(error)
        following = offset + 8 + tf.where(data, data_bytes, chunk_size)
        return (i + 1, tf.where(ok, following, offset), ok & (following < size), bad | walking & error,
                found | ok & data, tf.where(ok & data, chunk_frames, frames))

    first = fmt + 8 + fmt_size
    _, _, walking, bad, found, frames = tf.while_loop(
        lambda i, offset, walking, *_: (i < _WAV_MAX_CHUNKS) & tf.reduce_any(walking), after_fmt,
        [tf.constant(0), first, readable & (first < size), tf.zeros_like(riff), tf.zeros_like(riff), at(0)])
    damaged = (riff & (tf.equal(state, 0) | tf.equal(state, 2) | tf.equal(state, 1) & tf.logical_not(fields_sent)) |
               fields_wrong | readable & (bad | walking | tf.logical_not(found)))
    return {"not_wav": tf.logical_not(riff), "damaged": damaged, "chunk_order": tf.equal(state, 3),
            "extensible": extensible, "not_pcm16": not_pcm16, "rate": rate, "frames": frames}


def _decode_wavs(wavs, name, num_samples):
    """string [B] WAV files -> float32 [B, num_samples] 16 kHz mono, after checking, from each
    header (`_wav_headers`), that the decoder will read it and that it is 16 kHz, not empty and
    not too long: every refusal names the items at fault, none comes from the decoder."""
    head = _wav_headers(wavs)
    decodable = tf.logical_not(head["not_wav"] | head["damaged"] | head["chunk_order"] | head["extensible"] |
                               head["not_pcm16"])
    frames = head["frames"]
    checks = _in_order(
        lambda: _refuse(head["not_wav"], f"{name}: these items are not WAV files (16-bit PCM, RIFF/WAVE)",
                        "send the WAV file's bytes"),
        lambda: _refuse(head["damaged"], f"{name}: truncated or damaged WAV header (a size or field that does "
                        "not match the bytes sent)", "send the whole file, or rewrite it, e.g. sox in.wav -b 16 "
                        "out.wav"),
        lambda: _refuse(head["chunk_order"], f"{name}: these WAV files have a chunk before the format (fmt) chunk "
                        "(LIST metadata, say) which the decoder does not read", "rewrite them with the format chunk "
                        "first, e.g. sox in.wav -b 16 out.wav"),
        lambda: _refuse(head["extensible"], f"{name}: these WAV files have a WAVE_FORMAT_EXTENSIBLE header, which "
                        "the decoder does not read", "rewrite them as plain 16-bit PCM, mono or stereo, e.g. sox "
                        "in.wav -b 16 -c 1 out.wav"),
        lambda: _refuse(head["not_pcm16"], f"{name}: these WAV files are not 16-bit PCM (8/24/32-bit or float "
                        "samples)", "the model is served 16-bit PCM, e.g. sox in.wav -b 16 -e signed-integer "
                        "out.wav"),
        lambda: _refuse(decodable & tf.not_equal(head["rate"], _WAV_RATE), f"{name}: the model takes 16 kHz "
                        "audio; these WAV files are at another sample rate", "resample the WAV to 16000 Hz, e.g. "
                        "sox in.wav -r 16000 out.wav", head["rate"], "sample rates"),
        lambda: _refuse(decodable & tf.equal(frames, 0), f"{name}: empty audio (no samples)",
                        "send at least one sample"),
        lambda: _refuse(decodable & (frames > MAX_AUDIO_SECONDS * _WAV_RATE), f"{name}: audio longer than "
                        f"{MAX_AUDIO_SECONDS} s at 16 kHz", "send it in shorter pieces", frames, "samples"))

    def decode(data):
        audio, _ = tf.audio.decode_wav(data)  # float32 [n, channels] in [-1, 1]
        return _fit_length(tf.reduce_mean(audio, axis=1), num_samples)

    with tf.control_dependencies(checks):
        return tf.map_fn(decode, wavs, fn_output_signature=tf.TensorSpec([num_samples], tf.float32))


# Largest sample magnitude served: float samples are in [-1, 1]; up to 1.5 is let through (what
# resampling or filtering a full-scale signal overshoots by), more is refused (e.g. int16 values
# sent as floats: scale them by 1 / 32768).
MAX_WAVEFORM_PEAK = 1.5


def _prepare_waveforms(waveforms, name, num_samples):
    """float32 [B, n] -> [B, num_samples] after checking n, and that every sample is finite and of
    magnitude at most MAX_WAVEFORM_PEAK (refusals name the rows at fault)."""
    finite = tf.math.is_finite(waveforms)
    peak = tf.reduce_max(tf.abs(tf.where(finite, waveforms, tf.zeros_like(waveforms))), axis=1)
    n = tf.shape(waveforms)[1]  # the same for every row: no indices to name
    checks = _in_order(
        lambda: tf.debugging.assert_positive(n, message=f"{name}: empty audio (no samples)"),
        lambda: tf.debugging.assert_less_equal(n, MAX_AUDIO_SECONDS * _WAV_RATE, message=(
            f"{name}: audio longer than {MAX_AUDIO_SECONDS} s at 16 kHz; send it in shorter pieces")),
        lambda: _refuse(tf.logical_not(tf.reduce_all(finite, axis=1)), f"{name}: waveforms hold NaN or Inf",
                        "send finite samples"),
        lambda: _refuse(peak > MAX_WAVEFORM_PEAK, f"{name}: waveforms hold samples beyond +-{MAX_WAVEFORM_PEAK} (the "
                        "model takes float samples in [-1, 1])", "scale them to [-1, 1], e.g. int16 samples / 32768",
                        peak, "peaks"))
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
        return (f"float32 [batch, n] 16 kHz mono samples in [-1, 1] (1 <= n <= {MAX_AUDIO_SECONDS * _WAV_RATE}; "
                f"a row with a sample beyond +-{MAX_WAVEFORM_PEAK}, NaN or Inf is refused), cut or zero-padded to "
                f"{input_shape[0]}")
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
