"""Latency of the exported signatures, in-process with tf.saved_model.load, after warmup.

    python benchmarks/serving_latency.py --encoder=small_cnn --image_size=28 --channels=1
    python benchmarks/serving_latency.py --encoder=resnet18 --image_size=32 --channels=3
    python benchmarks/serving_latency.py --saved_model=saved_models/simclr_fashion_mnist_demo/1

Batch 1: p50 and p99 over --runs calls of `serving_default` (one PNG) and
`embed_pixels` (one uint8 image); batch 64: images/s over --batch_runs calls.
Also the size of the SavedModel folder. Weights do not change the timing, so
without --saved_model an untrained encoder of the asked shape is exported.
"""

import argparse
import io
import os
import tempfile
import time

import keras_ssl  # noqa: F401  (before TensorFlow: turns on its oneDNN kernels)
import numpy as np


def _folder_mb(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def _png(image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image if image.shape[-1] == 3 else image[..., 0]).save(buf, format="PNG")
    return buf.getvalue()


def _timed(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="small_cnn")
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--saved_model", default=None, help="measure this export instead")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--batch_runs", type=int, default=20)
    args = parser.parse_args()

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        path = args.saved_model
        if path is None:
            from keras_ssl.encoders import build_encoder
            from keras_ssl.export import export_saved_model

            encoder = build_encoder(args.encoder, (args.image_size, args.image_size, args.channels))
            path = export_saved_model(encoder, tmp, args.encoder, warmup=False)
        model = tf.saved_model.load(path)
        by_bytes, by_pixels = model.signatures["serving_default"], model.signatures["embed_pixels"]
        spec = by_pixels.structured_input_signature[1]["pixels"]
        facts = os.path.join(path, "assets.extra", "preprocessing.json")
        import json

        info = json.load(open(facts))
        h, w, c = info["image_height"], info["image_width"], info["channels"]
        assert spec.shape[-1] == c
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (64, h, w, c), dtype=np.uint8)
        pngs = [_png(i) for i in images]
        one_png, one_pixel = tf.constant(pngs[:1]), tf.constant(images[:1])
        all_png, all_pixels = tf.constant(pngs), tf.constant(images)
        for _ in range(20):  # warmup: tracing, oneDNN primitive caches
            by_bytes(images=one_png)
            by_pixels(pixels=one_pixel)
            by_bytes(images=all_png)
            by_pixels(pixels=all_pixels)
        rows = []
        for name, fn, batch_fn in (
                ("serving_default (PNG)", lambda: by_bytes(images=one_png), lambda: by_bytes(images=all_png)),
                ("embed_pixels (uint8)", lambda: by_pixels(pixels=one_pixel), lambda: by_pixels(pixels=all_pixels))):
            single = _timed(fn, args.runs) * 1000.0
            batch = _timed(batch_fn, args.batch_runs)
            rows.append((name, np.percentile(single, 50), np.percentile(single, 99), 64 / np.median(batch)))
        size = _folder_mb(path)
    label = args.saved_model or f"{args.encoder} {h}x{w}x{c}"
    print("| model | signature | batch 1 p50 | batch 1 p99 | batch 64 images/s | SavedModel |")
    print("|---|---|---|---|---|---|")
    for name, p50, p99, ips in rows:
        print(f"| {label} | {name} | {p50:.2f} ms | {p99:.2f} ms | {ips:,.0f} | {size:.1f} MB |")


if __name__ == "__main__":
    main()
