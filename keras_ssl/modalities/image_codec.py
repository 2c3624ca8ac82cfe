"""Image codecs in graph ops, for serving: encoded files (PNG, JPEG, GIF, BMP, WebP) and
uint8 pixels of any size -> uint8 `[B, H, W, C]` at the model's size, after checks that
name the items at fault (magic bytes, truncation, declared size).

The preprocessing is the evaluation preprocessing of training: decode in the file's
own channel count, convert to C channels, bilinear resize to H x W rounded back to
uint8 (as the dataset loader does).
"""

import tensorflow as tf

from keras_ssl.data.sources import resize_uint8
from keras_ssl.modalities.input_kinds import contains, in_order, read_uint, refuse

MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def is_image(data):
    """bool [batch]: the bytes start like a PNG, JPEG, GIF, BMP or WebP file."""
    ok = tf.zeros(tf.shape(data), tf.bool)
    # substr fails on a position past the end: pad so items shorter than 12 bytes are just "not an image"
    data = tf.strings.join([data, tf.fill(tf.shape(data), b"\0" * 12)])
    for magic in MAGIC:
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


def _jpeg_scan_start(images, size, jpeg):
    """int64 [B]: where each JPEG's first scan (its SOS marker, FF DA) starts, found by walking the
    marker segments from the SOI as a decoder does (fill bytes FF, standalone markers, then
    2-byte big-endian lengths); the item's length where a segment runs past the end (cut in its
    headers); 2 where the walk finds no marker or gives up (search the whole file). Items not
    `jpeg` get their length."""
    padded = tf.strings.join([images, tf.fill(tf.shape(images), b"\0" * 4)])

    def walk(i, offset, start):
        walking = start < 0
        marker = read_uint(padded, size, offset + 1, 1)
        standalone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8))
        one, two, none = (tf.fill(tf.shape(offset), tf.constant(v, tf.int64)) for v in (1, 2, -1))
        step = tf.where(marker == 0xFF, one, tf.where(standalone, two, 2 + read_uint(padded, size, offset + 2, 2, True)))
        found = tf.where(offset >= size, size, tf.where(
            read_uint(padded, size, offset, 1) != 0xFF, two, tf.where(marker == 0xDA, offset, none)))
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
    png = tf.equal(tf.strings.substr(images, 0, 8), MAGIC[0])
    before_crc = tf.strings.substr(images, tf.zeros_like(size), tf.maximum(size - 4, 0))
    png_cut = png & tf.logical_not(contains(before_crc, b"IEND"))
    jpeg = tf.equal(tf.strings.substr(images, 0, 3), MAGIC[1])
    scan = _jpeg_scan_start(images, size, jpeg)
    jpeg_cut = jpeg & tf.logical_not(contains(tf.strings.substr(images, scan, size - scan), b"\xff\xd9"))
    padded = tf.strings.join([images, tf.fill(tf.shape(images), b"\0" * 12)])
    webp = tf.equal(tf.strings.substr(padded, 0, 4), b"RIFF") & tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP")
    webp_cut = webp & (size < 8 + read_uint(padded, size, tf.fill(tf.shape(size), tf.constant(4, tf.int64)), 4))
    return png_cut | jpeg_cut | webp_cut


def decode_images(images, name, height, width, channels):
    """string [B] -> uint8 [B, height, width, channels], after checking every item is an
    image (magic bytes), not truncated (end markers, see `_truncated`) and of at most
    MAX_PIXELS."""
    valid = is_image(images)
    checks = in_order(
        lambda: refuse(tf.logical_not(valid), f"{name}: these items are not PNG/JPEG/GIF/BMP/WebP images",
                        "send the encoded file's bytes"),
        lambda: refuse(valid & _truncated(images), f"{name}: these images are truncated (the file ends before "
                        "its end marker)", "send the whole file"))
    with tf.control_dependencies(checks):
        pixels = tf.map_fn(_declared_pixels, images, fn_output_signature=tf.int64)
    checks.append(refuse(pixels > MAX_PIXELS, f"{name}: these images declare more than "
                          f"{MAX_PIXELS // 1_000_000} megapixels", "send them smaller", pixels, "pixels declared"))

    def decode(data):
        # channels=0: every format in its own channel count (asking GIF for 1 channel fails)
        img = tf.io.decode_image(data, channels=0, expand_animations=False)
        return resize_uint8(_to_channels(img, channels), height, width)

    with tf.control_dependencies(checks):
        return tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8))


def resize_pixels(pixels, name, height, width):
    """uint8 [B, h, w, C] of any size >= 1 -> uint8 [B, height, width, C]."""
    with tf.control_dependencies([tf.debugging.assert_positive(
            tf.shape(pixels)[1:3], message=f"{name}: images must have height and width >= 1")]):
        return resize_uint8(pixels, height, width)
