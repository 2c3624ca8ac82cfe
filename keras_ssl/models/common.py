"""Helpers shared by every method's train/test step."""

import keras
import tensorflow as tf

from keras_ssl.distribute import in_multi_worker_mode
from keras_ssl.errors import UserError


class MethodModel(keras.Model):
    """Base of every method model: the shared train/test step.

    A subclass implements `_forward(data, training) -> loss` (already scaled
    for the global batch, see each method) which also updates its metric
    trackers, lists the trackers in `metrics`, and names its sub-models in
    `_children()` so `build()` can build them (a model must be built before
    saving: a model left unbuilt after `fit` with a custom `train_step` loses
    its optimizer state silently when saved to `.keras`).
    """

    def _children(self):
        return ()

    def build(self, input_shape=None):
        for model in self._children():
            if model is not None and not model.built:
                model.build((None,) + tuple(model.input_shape[1:]))
        self.built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Builds the model and optimizer without pulling a batch.

        Keras's own version reduces a distributed batch across replicas, which
        fails under MultiWorkerMirroredStrategy (keras-team/keras#20585, the
        first of its two failures; the second, scalar logs, is handled by
        returning rank-1 logs); our models know their shapes from
        their children, so nothing needs a batch.
        """
        if not self.built:
            self.build()
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def _logs(self):
        """Metric results; rank 1 under multi-worker, where Keras's
        `reduce(..., axis=0)` of the logs fails on scalars (the second failure)."""
        logs = {m.name: m.result() for m in self.metrics}
        if in_multi_worker_mode():
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self._forward(data, training=True)
            if self.losses:  # regularisers, counted once over the replicas
                loss = loss + tf.add_n(self.losses) / tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._logs()

    def test_step(self, data):
        self._forward(data, training=False)
        return self._logs()


def split_data(data):
    """`x` or `(x, y)` or `(x, y, sample_weight)` -> `(x, y)`.

    A 2-tuple whose first item is itself a tuple/list is `(inputs, labels)`;
    a 2-tuple of tensors is a pair of inputs without labels.
    """
    if isinstance(data, dict):
        raise UserError("dict batches are not supported; pass x or (x, y)")
    if not isinstance(data, (tuple, list)):
        return data, None
    if len(data) == 2 and not isinstance(data[0], (tuple, list)) and _is_image_batch(data[1]):
        return tuple(data), None
    if len(data) in (2, 3):
        return data[0], data[1]
    if len(data) == 1:
        return data[0], None
    raise UserError(f"a batch must be x, (x, y) or (x, y, sample_weight), got {len(data)} items")


def _is_image_batch(t):
    return getattr(t, "shape", None) is not None and t.shape.rank == 4


def global_batch_size(local_size):
    """Sum of `local_size` over the replicas of the current replica context."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tf.cast(local_size, tf.int32)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local_size, tf.int32))


def embed_images(encoder, head, images, normalize, training=False):
    """Metric-model embedding: encoder -> optional `head` -> float32 -> optional L2
    normalisation, for uint8 or [0, 1] float images (Siamese and triplet models)."""
    from keras_ssl.data.augment import to_float01

    e = encoder(to_float01(images), training=training)
    if head is not None:
        e = head(e, training=training)
    e = tf.cast(e, tf.float32)
    return tf.math.l2_normalize(e, axis=-1) if normalize else e
