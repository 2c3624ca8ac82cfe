"""The served signatures take any decodable image: every size, format and channel count,
for grayscale and RGB models, converted and resized as the loader does."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_ssl.encoders import small_cnn
from keras_ssl.export import export_saved_model

SIZE = 8
LOSSLESS = {"PNG": {}, "BMP": {}, "GIF": {}, "WEBP": {"lossless": True}}
SIZES = [(1, 1), (5, 7), (SIZE, SIZE), (16, 16), (31, 200), (300, 40)]


@pytest.fixture(scope="module", params=[1, 3], ids=["gray_model", "rgb_model"])
def served(request, tmp_path_factory):
    channels = request.param
    encoder = small_cnn((SIZE, SIZE, channels), width_multiplier=0.25)
    path = export_saved_model(encoder, str(tmp_path_factory.mktemp("exports")), f"c{channels}", warmup=False)
    return channels, tf.saved_model.load(path)


def _source(mode, height, width, seed=0):
    rng = np.random.default_rng(seed)
    depth = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, (height, width, depth), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if depth == 1 else array, mode)


def _encode(image, fmt):
    if fmt == "GIF" and image.mode not in ("L", "P"):
        image = image.convert("RGB").quantize(64)  # GIF is paletted
    if fmt == "BMP" and image.mode == "LA":
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **LOSSLESS.get(fmt, {}))
    return buffer.getvalue()


def _expected_pixels(data, channels):
    """What the loader would train on: Pillow decodes, alpha dropped, luma rounded, bilinear resize."""
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        array = np.asarray(im.convert("RGBA" if im.mode not in ("L", "LA") else "LA"))
    if array.ndim == 2:
        array = array[..., None]
    gray_source = array.shape[-1] <= 2
    if channels == 3:
        rgb = np.repeat(array[..., :1], 3, axis=-1) if gray_source else array[..., :3]
        pixels = rgb
    else:
        pixels = array[..., :1] if gray_source else np.round(
            array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None]
    resized = tf.image.resize(pixels.astype(np.float32)[None], [SIZE, SIZE], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


@pytest.mark.parametrize("fmt", sorted(LOSSLESS))
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_every_lossless_format_size_and_channel_count_is_served(served, fmt, mode):
    channels, loaded = served
    if fmt == "BMP" and mode in ("LA", "RGBA"):
        pytest.skip("Pillow writes no BMP with alpha")
    for i, (height, width) in enumerate(SIZES):
        data = _encode(_source(mode, height, width, seed=i), fmt)
        served_embedding = loaded.signatures["serving_default"](images=tf.constant([data]))["embedding"]
        expected = loaded.signatures["embed_pixels"](pixels=_expected_pixels(data, channels))["embedding"]
        assert served_embedding.shape == (1, expected.shape[-1])
        np.testing.assert_allclose(served_embedding, expected, atol=1e-5,
                                   err_msg=f"{fmt} {mode} {height}x{width}")


def test_jpeg_and_lossy_webp_of_any_size_are_served(served):
    channels, loaded = served
    items = []
    for mode in ("L", "RGB"):
        for i, (height, width) in enumerate(SIZES):
            image = _source(mode, height, width, seed=i)
            for fmt in ("JPEG", "WEBP"):
                buffer = io.BytesIO()
                image.save(buffer, format=fmt, quality=90)
                items.append(buffer.getvalue())
    out = loaded.signatures["serving_default"](images=tf.constant(items))["embedding"].numpy()
    assert out.shape[0] == len(items) and np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)


def test_large_image_and_pixels_of_other_sizes(served):
    channels, loaded = served
    big = np.random.default_rng(0).integers(0, 256, (4000, 4000), dtype=np.uint8)
    data = _encode(Image.fromarray(big, "L"), "PNG")
    out = loaded.signatures["serving_default"](images=tf.constant([data]))["embedding"]
    expected = loaded.signatures["embed_pixels"](pixels=_expected_pixels(data, channels))["embedding"]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # embed_pixels resizes a batch of another size as the loader does (resize_uint8), and at the
    # model's size the resize is the identity
    from keras_ssl.data.sources import resize_uint8

    pixels = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, channels), dtype=np.uint8)
    np.testing.assert_array_equal(resize_uint8(tf.constant(pixels), SIZE, SIZE).numpy(), pixels)
    same = loaded.signatures["embed_pixels"](pixels=tf.constant(pixels))["embedding"]
    doubled = np.repeat(np.repeat(pixels, 2, 1), 2, 2)
    double = loaded.signatures["embed_pixels"](pixels=tf.constant(doubled))["embedding"]
    resized = resize_uint8(tf.constant(doubled), SIZE, SIZE)
    np.testing.assert_allclose(double, loaded.signatures["embed_pixels"](pixels=resized)["embedding"], atol=1e-6)
    assert double.shape == same.shape and not np.allclose(same[0], same[1])  # two different images


def _declaring(fmt, height, width):
    """A small file whose header declares height x width (a decompression bomb's header)."""
    import struct

    if fmt == "PNG":
        return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", width, height) + b"\x08\x00\x00\x00" * 4
                + struct.pack(">I4sI", 0, b"IEND", 0xAE426082))  # ends like a whole file (else: refused as truncated)
    if fmt == "GIF":
        return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 32
    if fmt == "BMP":
        return b"BM" + b"\x00" * 16 + struct.pack("<ii", width, -height) + b"\x00" * 32
    if fmt == "WEBP":
        return b"RIFF" + b"\x00" * 4 + b"WEBPVP8X" + b"\x00" * 8 + (width - 1).to_bytes(3, "little") + \
            (height - 1).to_bytes(3, "little") + b"\x00" * 16
    jpeg = bytearray(_encode(_source("L", 8, 8), "JPEG"))  # a real JPEG with its frame size patched
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP", "JPEG"])
def test_images_over_the_pixel_cap_are_refused_before_decoding(served, fmt):
    _, loaded = served
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 25 megapixels"):
        loaded.signatures["serving_default"](images=tf.constant([_declaring(fmt, 20000, 20000)]))
    if fmt == "PNG":  # 4000 x 4000 is under the cap: served (one colour: a small file)
        big = _encode(Image.new("L", (4000, 4000), 7), "PNG")
        assert loaded.signatures["serving_default"](images=tf.constant([big]))["embedding"].shape == (1, 32)
