"""CPC's own task on held-out clips, per prediction step: the `info_nce`
evaluation (`keras_ssl.evaluation.method_evaluations`)."""

import math

import numpy as np
import tensorflow as tf

from keras_ssl.errors import UserError


def step_metrics(model, waveforms, batch_size=64):
    """Per k = 1..K on `waveforms` (numpy `[N, samples]`), in batches of
    `batch_size` (negatives drawn from each batch): `{"accuracy": [K],
    "loss": [K], "mi_bound": [K]}` as lists of floats, each the mean over the
    batches; `mi_bound` is the InfoNCE bound `log(N) - loss` with `N`
    candidates. `model`: a CPC model (`prediction_terms(waveforms, training)`
    gives the per-k terms, `prediction_steps` is K)."""
    steps = model.prediction_steps
    total_loss, total_correct, total_bound = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    batches = 0
    terms_fn = tf.function(lambda x: [(tf.reduce_mean(t), tf.reduce_mean(tf.cast(c, tf.float32)), n)
                                      for t, c, n in model.prediction_terms(x, False)], reduce_retracing=True)
    for start in range(0, len(waveforms) - batch_size + 1, batch_size):
        for i, (loss, acc, n) in enumerate(terms_fn(tf.constant(waveforms[start:start + batch_size]))):
            total_loss[i] += float(loss)
            total_correct[i] += float(acc)
            total_bound[i] += math.log(float(n)) - float(loss)
        batches += 1
    if not batches:
        raise UserError(f"step metrics need at least {batch_size} clips, got {len(waveforms)}")
    return {"accuracy": list(total_correct / batches), "loss": list(total_loss / batches),
            "mi_bound": list(total_bound / batches)}
