"""What audio and image Contrastive Predictive Coding share (van den Oord, Li,
Vinyals 2018): the step predictors `W_k`, the InfoNCE of every step k over
sequences of latents, its scaling for the global batch and its metrics.
Audio CPC is `keras_ssl.models.cpc`, image CPC `keras_ssl.models.cpc_image`."""

import keras
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.models.global_batch import global_batch_size
from keras_ssl.models.method_model import MethodModel


def step_predictors(context_dim, latent_dim, steps=12, name="predictor"):
    """The K linear maps `W_k` of CPC as one bias-free Dense: `c_t` -> `[W_1 c_t, ..., W_K c_t]`."""
    inputs = keras.Input(shape=(None, int(context_dim)), name="context")
    outputs = keras.layers.Dense(int(steps) * int(latent_dim), use_bias=False, name="w_k")(inputs)
    return keras.Model(inputs, outputs, name=name)


class _PredictiveCoding(MethodModel):
    """What audio and image CPC share: the metrics, the InfoNCE of every step
    k over sequences of latents, and its scaling for the global batch.

    A subclass sets the sub-models and `latent_dim`, `prediction_steps`,
    `num_negatives` and `seed`, then calls `self.build()`.

    Metrics: `loss`, `accuracy` (the positive scored highest) and `mi_bound`
    (the InfoNCE bound `log(N) - loss`), each the mean over k.
    """

    SUB_MODELS = ("encoder", "context", "predictor")
    TRACKED = ("loss", "accuracy", "mi_bound")

    def _step_terms(self, predictions, latents):
        """`predictions` `[S, T, K * D]` (`W_k c_t` stacked), `latents` `[S, T, D]` ->
        per k = 1..K `(losses [S, T-k], correct [S, T-k], N)`; the negatives are
        drawn afresh for every optimizer step and k."""
        shape = tf.shape(predictions)
        predictions = tf.reshape(predictions, [shape[0], shape[1], self.prediction_steps, self.latent_dim])
        length = tf.shape(latents)[1]
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations if optimizer is not None else 0, tf.int32)
        return [losses.cpc_info_nce_terms(predictions[:, :length - k, k - 1], latents, k, self.num_negatives,
                                          tf.stack([self.seed, step * self.prediction_steps + k]))
                for k in range(1, self.prediction_steps + 1)]

    def _info_nce_loss(self, step_terms, n_local, sequences_per_example=1):
        """This replica's loss, `sum_k sum(terms_k) / (K * B_global * sequences_per_example
        * (T - k))`, so that the replicas' sum is the mean over k of the global mean;
        updates the trackers (means over k)."""
        n_global = tf.cast(global_batch_size(n_local), tf.float32)
        loss, mean_loss, accuracy, bound = 0.0, 0.0, 0.0, 0.0
        for terms, correct, candidates in step_terms:
            per_example = tf.cast(sequences_per_example, tf.float32) * tf.cast(tf.shape(terms)[1], tf.float32)
            loss += tf.reduce_sum(terms) / (n_global * per_example)
            local = tf.reduce_mean(terms)
            mean_loss += local
            accuracy += tf.reduce_mean(tf.cast(correct, tf.float32))
            bound += tf.math.log(tf.cast(candidates, tf.float32)) - local
        k = float(self.prediction_steps)
        weight = tf.cast(n_local, tf.float32)
        self.trackers["loss"].update_state(mean_loss / k, sample_weight=weight)
        self.trackers["accuracy"].update_state(accuracy / k, sample_weight=weight)
        self.trackers["mi_bound"].update_state(bound / k, sample_weight=weight)
        return loss / k
