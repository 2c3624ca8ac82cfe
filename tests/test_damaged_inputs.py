"""Damaged inputs are refused by the served signatures one line at a time, naming the signature,
the indices at fault and the reason (issue 29.2-3): cut or inconsistent WAV headers, a chunk the
WAV decoder cannot skip, other rates, empty or long WAVs, waveforms far outside [-1, 1], truncated
PNG/JPEG/WebP files. Each bad item sits at index 1 of a 3-item batch; the same batch with a good
item there is served and equals the model."""

import io
import re
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy.io import wavfile

from keras_ssl.audio_encoders import cpc_conv
from keras_ssl.encoders import small_cnn
from keras_ssl.export import MAX_WAVEFORM_PEAK, export_saved_model
from keras_ssl.models.cpc import CPC

SAMPLES = 3200


def _wav(samples, rate=16000):
    buf = io.BytesIO()
    wavfile.write(buf, rate, np.round(np.asarray(samples) * 32768).clip(-32768, 32767).astype(np.int16))
    return buf.getvalue()


def _chunk(chunk_id, body):
    return chunk_id + struct.pack("<I", len(body)) + body


def _riff(*chunks):
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = CPC(cpc_conv(8), context_dim=8, prediction_steps=2, num_samples=SAMPLES)
    path = export_saved_model(model, str(tmp_path_factory.mktemp("audio")), "cpc", warmup=False,
                              input_shape=(SAMPLES,))
    rng = np.random.default_rng(0)
    clips = np.round(rng.uniform(-0.5, 0.5, (3, SAMPLES)) * 32768) / 32768  # on the int16 grid, as a WAV carries it
    return model, tf.saved_model.load(path).signatures, clips.astype(np.float32)


def _served_as_model(audio, batch):
    """`batch` (WAV bytes) is served, and equals the model on the clips."""
    model, signatures, clips = audio
    out = signatures["serving_default"](audio=tf.constant(batch))
    np.testing.assert_allclose(out["context"].numpy(), model.frames(clips).numpy(), atol=1e-5)


def _refused(call, pattern):
    """`call` is refused with one assertion line, naming the indices once, that matches `pattern`."""
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        call()
    line = next(line for line in str(error.value).splitlines() if "assertion failed" in line or "(indices)" in line)
    assert line.count("(indices)") == 1, line
    assert re.search(pattern, line), line
    return line


def _damaged_wavs(clip):
    """{case: (a damaged WAV made from `clip`, what its refusal must say)}."""
    good = _wav(clip)
    fmt, data = good[12:36], good[36:]
    assert fmt.startswith(b"fmt ") and data.startswith(b"data")
    rate0 = bytearray(good)
    rate0[24:28] = b"\0\0\0\0"
    return {
        "truncated header": (good[:20], "truncated or damaged WAV header"),
        "data shorter than declared": (good[:len(good) // 2], "truncated or damaged WAV header"),
        "rate 0": (bytes(rate0), "truncated or damaged WAV header"),
        "no data chunk": (_riff(fmt), "truncated or damaged WAV header"),
        "LIST before fmt": (_riff(_chunk(b"LIST", b"INFOISFT\x04\x00\x00\x00sox\x00"), fmt, data),
                            r"a chunk before the format \(fmt\) chunk .*which the decoder does not read"),
        "8 kHz": (_wav(clip, rate=8000), r"takes 16 kHz audio.*\(indices\): \[1\] \(sample rates: \[8000\]\); "
                                         "resample the WAV to 16000 Hz"),
        "empty": (_wav(np.zeros(0)), "empty audio"),
        "longer than 60 s": (_wav(np.zeros(16000 * 61)), r"longer than 60 s.*\[1\] \(samples: \[976000\]\)"),
        "24-bit": (_riff(fmt[:8] + struct.pack("<HHIIHH", 1, 1, 16000, 48000, 3, 24), _chunk(b"data", b"\0" * 30)),
                   r"not 16-bit PCM"),
    }


@pytest.mark.parametrize("case", list(_damaged_wavs(np.zeros(10))))
def test_damaged_wav_is_refused_by_signature_index_and_reason(audio, case):
    _, signatures, clips = audio
    bad, reason = _damaged_wavs(clips[1])[case]
    batch = [_wav(clips[0]), bad, _wav(clips[2])]
    line = _refused(lambda: signatures["serving_default"](audio=tf.constant(batch)), f"serving_default: .*{reason}")
    assert re.search(r"\(indices\): \[1\]( \(.*\))?; \S", line), line  # the item at fault, then what to do
    batch[1] = _wav(clips[1])
    _served_as_model(audio, batch)


def test_every_wav_at_fault_is_listed_and_layouts_the_decoder_reads_are_served(audio):
    _, signatures, clips = audio
    cut = _wav(clips[0])[:20]
    line = _refused(lambda: signatures["serving_default"](audio=tf.constant([cut, _wav(clips[1]), cut])),
                    r"serving_default: truncated or damaged WAV header .*\(indices\): \[0, 2\]; send the whole file")
    assert "sox" in line
    # JUNK before "fmt ", LIST after it and stereo are read by the decoder: served, not refused
    good = [_wav(c) for c in clips]
    fmt, data = good[0][12:36], good[0][36:]
    junk = _riff(_chunk(b"JUNK", b"\0" * 28), fmt, _chunk(b"LIST", b"INFOxxxx"), data)
    stereo = _wav(np.stack([clips[2], clips[2]], axis=1))
    _served_as_model(audio, [junk, good[1], stereo])


def test_waveforms_far_outside_unit_range_or_not_finite_are_refused_by_index(audio):
    model, signatures, clips = audio
    embed = signatures["embed_waveforms"]
    loud = clips.copy()
    loud[1] *= 1e7
    _refused(lambda: embed(waveforms=tf.constant(loud)),
             rf"embed_waveforms: waveforms hold samples beyond \+-{MAX_WAVEFORM_PEAK} .*\(indices\): \[1\] "
             r"\(peaks: \[\d.*\]\); scale them to \[-1, 1\]")
    nan = clips.copy()
    nan[1, 5] = np.nan
    _refused(lambda: embed(waveforms=tf.constant(nan)),
             r"embed_waveforms: waveforms hold NaN or Inf \(indices\): \[1\]; send finite samples")
    slightly_over = clips.copy()
    slightly_over[1] *= 2.5  # peak 1.25: resampling overshoot, served
    out = embed(waveforms=tf.constant(slightly_over))
    np.testing.assert_allclose(out["context"].numpy(), model.frames(slightly_over).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    keras.utils.set_random_seed(0)
    encoder = small_cnn((8, 8, 1), width_multiplier=0.25)
    path = export_saved_model(encoder, str(tmp_path_factory.mktemp("image")), "cnn", warmup=False)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    return encoder, tf.saved_model.load(path).signatures, pixels


def _encode(pixels, fmt, size=None, **options):
    im = Image.fromarray(pixels[..., 0], "L")
    if size:
        im = im.resize(size, Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def _jpeg_with_thumbnail(pixels):
    """A 64 x 64 JPEG carrying an 8 x 8 JPEG thumbnail (and its FF D9) in an EXIF segment, as photos do."""
    thumbnail, main = _encode(pixels, "JPEG"), _encode(pixels, "JPEG", (64, 64))
    exif = b"Exif\0\0" + thumbnail
    return main[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + main[2:]


def _cut(data):
    return data[:len(data) // 2]


TRUNCATED = {
    "PNG, first half": lambda p: _cut(_encode(p, "PNG")),
    "PNG, IEND's CRC cut": lambda p: _encode(p, "PNG")[:-1],
    "JPEG, first half": lambda p: _cut(_encode(p, "JPEG", (64, 64))),
    "JPEG, no end marker": lambda p: _encode(p, "JPEG")[:-2],
    "progressive JPEG, first half": lambda p: _cut(_encode(p, "JPEG", (64, 64), progressive=True)),
    "JPEG with EXIF thumbnail, first half": lambda p: _cut(_jpeg_with_thumbnail(p)),
    "WebP, first half": lambda p: _cut(_encode(p, "WEBP", (64, 64), lossless=True)),
}


@pytest.mark.parametrize("case", list(TRUNCATED))
def test_truncated_image_is_refused_by_signature_index_and_reason(image, case):
    encoder, signatures, pixels = image
    batch = [_encode(pixels[0], "PNG"), TRUNCATED[case](pixels[1]), _encode(pixels[2], "PNG")]
    _refused(lambda: signatures["serving_default"](images=tf.constant(batch)),
             r"serving_default: these images are truncated .*\(indices\): \[1\]; send the whole file")
    batch[1] = _encode(pixels[1], "PNG")
    out = signatures["serving_default"](images=tf.constant(batch))["embedding"].numpy()
    expected = tf.math.l2_normalize(encoder.predict(pixels.astype(np.float32) / 255, verbose=0), -1).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_whole_images_with_trailing_bytes_or_a_thumbnail_are_served_and_oversized_ones_named(image):
    _, signatures, pixels = image
    trailing = [_encode(pixels[0], "PNG") + b"\0" * 9, _jpeg_with_thumbnail(pixels[1]) + b"\xff\xd8 more",
                _encode(pixels[2], "JPEG") + b"MP4 video of a motion photo"]
    assert signatures["serving_default"](images=tf.constant(trailing))["embedding"].shape == (3, 32)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", 30000, 30000) + bytes(16) + b"IEND" + bytes(4)
    _refused(lambda: signatures["serving_default"](images=tf.constant([trailing[0], bomb, trailing[0]])),
             r"serving_default: these images declare more than 25 megapixels \(indices\): \[1\] "
             r"\(pixels declared: \[900000000\]\); send them smaller")
