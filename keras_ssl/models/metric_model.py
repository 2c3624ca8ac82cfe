"""The base of the metric-learning models (Siamese and triplet networks): a model
that embeds images and compares pairs, serving `verify` with a threshold."""

import tensorflow as tf

from keras_ssl.errors import UserError
from keras_ssl.models.method_model import MethodModel


def embed_images(encoder, head, images, normalize, training=False):
    """Metric-model embedding: encoder -> optional `head` -> float32 -> optional L2
    normalisation, for uint8 or [0, 1] float images (Siamese and triplet models)."""
    from keras_ssl.data.augment import to_float01

    e = encoder(to_float01(images), training=training)
    if head is not None:
        e = head(e, training=training)
    e = tf.cast(e, tf.float32)
    return tf.math.l2_normalize(e, axis=-1) if normalize else e


def check_threshold(threshold):
    """`threshold` as a finite float, or a `UserError`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise UserError(f"threshold must be a number, got {threshold!r}")
    threshold = float(threshold)
    if threshold != threshold or threshold in (float("inf"), float("-inf")):
        raise UserError(f"threshold must be a finite number, got {threshold}")
    return threshold


class MetricModel(MethodModel):
    """A model that embeds images and compares pairs (Siamese, triplet networks).

    Subclasses implement `embed(images)` and `pair_score(e_a, e_b)`, and set
    `SCORE_NAME`: "distance" (a pair is the same when the score is below the
    threshold) or "score" (a probability: same when at or above it). The
    representation is the embedding; with a threshold (given, or the model's
    own `threshold` attribute when not None) the export adds `verify`.
    """

    supports_threshold = True
    SCORE_NAME = "distance"
    threshold = None

    def representation(self, images, training=False):
        return self.embed(images, training=training)

    def decide(self, score, threshold=None):
        """Boolean "same" decisions for pair scores at `threshold` (default: the model's)."""
        t = self.threshold if threshold is None else threshold
        return score < t if self.SCORE_NAME == "distance" else score >= t

    def similarity(self, e_a, e_b):
        """Higher = more alike: `-distance`, or the probability."""
        score = self.pair_score(e_a, e_b)
        return -score if self.SCORE_NAME == "distance" else score

    def serving_endpoints(self, image_shape, threshold=None):
        endpoints = super().serving_endpoints(image_shape)
        threshold = self.threshold if threshold is None else threshold
        if threshold is not None:
            endpoints.append(self._verify_endpoint(check_threshold(threshold)))
        return endpoints

    def _verify_endpoint(self, threshold):
        from keras_ssl.models.endpoints import Endpoint, ServingInput, ServingOutput

        variable = tf.Variable(threshold, dtype=tf.float32, trainable=False, name="threshold")
        key = self.SCORE_NAME

        def verify(images_a, images_b):
            e_a = tf.cast(self.embed(images_a, training=False), tf.float32)
            e_b = tf.cast(self.embed(images_b, training=False), tf.float32)
            score = tf.cast(self.pair_score(e_a, e_b), tf.float32)
            return {key: score, "same": self.decide(score, variable)}

        rule = "distance < threshold" if key == "distance" else "score >= threshold"
        meaning = "Euclidean distance of the embeddings" if key == "distance" else "same-class probability"
        return Endpoint("verify", (ServingInput("images_a"), ServingInput("images_b")),
                        (ServingOutput(key, "float32", (), meaning), ServingOutput("same", "bool", (), rule)),
                        verify, variables=(variable,), variable_collection="threshold")
