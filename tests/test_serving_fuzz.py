"""Fuzzing the served signatures for a bounded time (issue 13): random bytes, every image
format and mode at random sizes, truncated files, decompression-bomb headers, empty and large
batches, random pixel tensors. In a separate process, so an abort would show as a crash: every
valid image must be served, every invalid input refused with an exception, nothing may crash."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from keras_ssl.encoders import small_cnn
from keras_ssl.export import export_saved_model

SECONDS = 20

FUZZ = textwrap.dedent('''
    import io, json, struct, sys, time
    import numpy as np, tensorflow as tf
    from PIL import Image

    path, seconds, channels = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    m = tf.saved_model.load(path)
    default, pixels_fn = m.signatures["serving_default"], m.signatures["embed_pixels"]
    rng = np.random.default_rng(0)
    counts = {}
    failures = []

    def image(fmt, mode, h, w):
        depth = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        array = rng.integers(0, 256, (h, w, depth), dtype=np.uint8)
        im = Image.fromarray(array[..., 0] if depth == 1 else array, mode)
        if fmt in ("JPEG", "BMP") and mode in ("LA", "RGBA"):
            im = im.convert(mode[:-1] if mode != "LA" else "L")
        if fmt == "GIF":
            im = im.convert("RGB").quantize(32)
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        return buf.getvalue()

    def bomb():
        return b"\\x89PNG\\r\\n\\x1a\\n" + struct.pack(">I4sII", 13, b"IHDR", 30000, 30000) + bytes(16)

    def expect(kind, ok, call):
        try:
            out = call()
            result = "served"
        except tf.errors.InvalidArgumentError:
            result = "refused"
        counts[kind + "/" + result] = counts.get(kind + "/" + result, 0) + 1
        if ok is not None and (result == "served") != ok:
            failures.append(f"{kind}: {result}")
        return result

    start = time.time()
    while time.time() - start < seconds:
        case = rng.integers(0, 7)
        if case == 0:  # random bytes, sometimes with a real magic number in front
            data = bytes(rng.integers(0, 256, rng.integers(0, 300), dtype=np.uint8))
            if rng.random() < 0.5:  # behind a real magic number: refused or decoded, never a crash
                data = [b"\\x89PNG\\r\\n\\x1a\\n", b"\\xff\\xd8\\xff", b"GIF89a", b"BM", b"RIFF"][rng.integers(0, 5)] + data
                expect("magic_then_random", None, lambda: default(images=tf.constant([data])))
            else:
                expect("random_bytes", False, lambda: default(images=tf.constant([data])))
        elif case == 1:  # a valid image of any format, mode and size
            fmt = ["PNG", "JPEG", "GIF", "BMP", "WEBP"][rng.integers(0, 5)]
            data = image(fmt, ["L", "LA", "RGB", "RGBA"][rng.integers(0, 4)], *rng.integers(1, 300, 2))
            expect("valid_" + fmt, True, lambda: default(images=tf.constant([data])))
        elif case == 2:  # truncated: refused or decoded, never a crash
            data = image(["PNG", "JPEG", "GIF", "BMP", "WEBP"][rng.integers(0, 5)], "RGB", 40, 40)
            data = data[: rng.integers(1, len(data))]
            expect("truncated", None, lambda: default(images=tf.constant([data])))
        elif case == 3:
            expect("bomb", False, lambda: default(images=tf.constant([bomb()])))
        elif case == 4:  # empty and large batches of valid images
            n = [0, 1, 64][rng.integers(0, 3)]
            batch = [image("PNG", "L", 8, 8)] * n
            expect(f"batch_{n}", True, lambda: default(images=tf.constant(batch, tf.string)))
        elif case == 5:  # one bad item in a batch refuses the batch
            batch = [image("PNG", "L", 8, 8), b"garbage"]
            expect("mixed_batch", False, lambda: default(images=tf.constant(batch)))
        else:  # random pixel tensors: valid iff rank 4 with the model's channels and non-empty sides
            rank = rng.integers(2, 6)
            shape = [int(s) for s in rng.integers(0, 12, rank)]
            if rng.random() < 0.5:  # half of them well formed, of any size
                rank, shape = 4, [int(rng.integers(1, 5)), *map(int, rng.integers(1, 300, 2)), channels]
            valid = rank == 4 and shape[-1] == channels and shape[1] > 0 and shape[2] > 0 or (
                rank == 4 and shape[-1] == channels and shape[0] == 0)
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            expect("pixels", valid, lambda: pixels_fn(pixels=tf.constant(array)))
    print(json.dumps({"counts": counts, "failures": failures[:20]}))
''')


@pytest.mark.parametrize("channels", [1, 3])
def test_fuzzed_requests_are_served_or_refused_never_crash(tmp_path, channels):
    encoder = small_cnn((8, 8, channels), width_multiplier=0.25)
    path = export_saved_model(encoder, str(tmp_path), "fuzz", warmup=False)
    proc = subprocess.run([sys.executable, "-c", FUZZ, path, str(SECONDS / 2), str(channels)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, f"the serving process crashed ({proc.returncode}): {proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failures"] == [], out
    counts = out["counts"]
    assert sum(counts.values()) > 50, counts  # it did fuzz
    for kind in ("random_bytes/refused", "bomb/refused", "mixed_batch/refused", "batch_64/served",
                 "pixels/served", "pixels/refused"):
        assert counts.get(kind, 0) > 0, (kind, counts)
