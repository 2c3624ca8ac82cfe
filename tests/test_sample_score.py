"""The classifier score of generated samples (`keras_ssl.evaluation.sample_score`)."""

import math
import os

import numpy as np

from keras_ssl.data import load_source
from keras_ssl.evaluation.sample_score import classifier_scores, reference_classifier, sample_score


def test_classifier_scores_match_their_formulas():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 4)) * 3
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got = classifier_scores(p, confidence=0.9)
    # independently: the loops of the definitions
    marginal = [sum(p[i, c] for i in range(50)) / 50 for c in range(4)]
    kl = [sum(p[i, c] * math.log(p[i, c] / marginal[c]) for c in range(4)) for i in range(50)]
    counts = [sum(1 for i in range(50) if max(range(4), key=lambda c: p[i, c]) == c) for c in range(4)]
    entropy = -sum(n / 50 * math.log(n / 50) for n in counts if n)
    assert got["class_counts"] == counts
    assert math.isclose(got["inception_score"], math.exp(sum(kl) / 50), rel_tol=1e-9)
    assert math.isclose(got["class_evenness"], entropy / math.log(4), rel_tol=1e-9)
    assert got["confident_share"] == sum(1 for i in range(50) if p[i].max() >= 0.9) / 50
    # the ends of the scale: confident and even -> C, uniform -> 1
    assert math.isclose(classifier_scores(np.eye(4)[np.arange(40) % 4])["inception_score"], 4.0, rel_tol=1e-6)
    # the threshold is inclusive: p = 0.9 exactly counts as confident, just below does not
    assert classifier_scores(np.array([[0.9, 0.1], [0.89, 0.11]]), confidence=0.9)["confident_share"] == 0.5
    uniform = classifier_scores(np.full((10, 4), 0.25))
    assert math.isclose(uniform["inception_score"], 1.0) and uniform["confident_share"] == 0.0


class _Replay:
    """A stand-in generator: seed i gives image `images[i]` (or a blank image)."""

    def __init__(self, images, blank=False):
        self.images, self.blank = images, blank

    def sample_images(self, seeds):
        chosen = self.images[np.asarray(seeds) % len(self.images)]
        return np.zeros_like(chosen) if self.blank else chosen


def test_real_images_score_high_and_blank_ones_low_and_the_judge_is_cached(tmp_path):
    digits = load_source("digits")
    real = sample_score(_Replay(digits.test.images), digits, samples=300, cache_dir=str(tmp_path))
    assert real["sample_classifier_test_accuracy"] > 0.85, real
    assert real["sample_confident_share"] > 0.6 and real["sample_class_evenness"] > 0.95, real
    assert real["sample_inception_score"] > 6, real
    assert os.path.exists(real["sample_classifier"])
    blank = sample_score(_Replay(digits.test.images, blank=True), digits, samples=300, cache_dir=str(tmp_path))
    assert blank["sample_class_evenness"] == 0.0 and math.isclose(blank["sample_inception_score"], 1.0, rel_tol=1e-6)
    # the second call met the same judge, read from the cache (one file, same test accuracy)
    assert blank["sample_classifier"] == real["sample_classifier"]
    assert blank["sample_classifier_test_accuracy"] == real["sample_classifier_test_accuracy"]
    assert len(os.listdir(tmp_path)) == 1
    classifier, path = reference_classifier(digits, cache_dir=str(tmp_path))
    assert path == real["sample_classifier"] and classifier.output_shape == (None, 10)
