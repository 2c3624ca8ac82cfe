"""Spread of the L2-normalised representation of healthy (untrained) models, as a
fraction of the even 1/sqrt(D): the figures behind `keras_ssl.health.COLLAPSE_FRACTION`.

    python benchmarks/representation_spread.py

Untrained encoders are the least spread healthy models (training spreads them); a
collapsed model is near 0. Prints one line per dataset x encoder x width.
"""

import math

import keras_ssl  # noqa: F401  (first: sets TF_ENABLE_ONEDNN_OPTS before TensorFlow loads)
from keras_ssl.data import load_source
from keras_ssl.encoders import build_encoder
from keras_ssl.health import COLLAPSE_FRACTION, representation_spread
from keras_ssl.models import OnlineTriplet


def main():
    print(f"refused below {COLLAPSE_FRACTION} x 1/sqrt(D)")
    for name in ("digits", "fashion_mnist"):
        dataset = load_source(name)
        images = dataset.test.images[:1000].astype("float32") / 255.0
        for encoder_name in ("small_cnn", "resnet18"):
            for width in (0.25, 1.0):
                features = build_encoder(encoder_name, dataset.image_shape, width, True).predict(images, verbose=0)
                d = features.shape[1]
                print(f"{name:14s} {encoder_name:9s} width {width:4} D {d:4d}  spread x sqrt(D) = "
                      f"{representation_spread(features) * math.sqrt(d):.3f}")
        model = OnlineTriplet(build_encoder("small_cnn", dataset.image_shape, 0.25, True), embedding_dim=16)
        print(f"{name:14s} triplet 16-d embedding head        spread x sqrt(D) = "
              f"{representation_spread(model.predict(images, verbose=0)) * 4:.3f}")


if __name__ == "__main__":
    main()
