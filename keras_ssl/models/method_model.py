"""The base of every method model: the shared train/test step, sub-models, metrics,
what it serves, and its config."""

import keras
import tensorflow as tf

from keras_ssl.distribute import in_multi_worker_mode
from keras_ssl.errors import UserError
from keras_ssl.models.global_batch import _NO_SAMPLE_WEIGHT, split_data
from keras_ssl.models.hyper_parameters import constructor_config
from keras_ssl.models.online_probe import OnlineProbe


class MethodModel(OnlineProbe, keras.Model):
    """Base of every method model.

    A subclass
      * lists the attribute names of its sub-models in `SUB_MODELS` (the base
        builds them, saves them in `get_config` and restores them in
        `from_config`);
      * keeps each constructor argument that is a setting (a number, string,
        bool or None) under its own name, `self.margin = float(margin)`: the
        base's `get_config` saves those (see `keras_ssl.models.hyper_parameters`;
        the defaults are its options dataclass's), so a subclass writes
        `get_config` only for a value it keeps in another form;
      * lists the names of its metrics in `TRACKED`, in the order of the logs:
        the base makes a `keras.metrics.Mean` of each, `self.trackers[name]`,
        and lists them (then the probe's) in `metrics`;
      * implements `method_loss(data, training) -> loss`: the loss of one
        replica's batch, already scaled for the global batch (see each method),
        updating its trackers;
      * may override `after_apply()` (called after every optimizer step: the
        place for codebook updates),
        `parameter_groups()` (variables with their own gradient scale or no
        weight decay; default: the online probe takes no weight decay) and
        `momentum_pairs()` (online/target networks the base updates after every
        step by a moving average; see `keras_ssl.models.hooks`),
        `representation(images)` (default: the encoder's features) and
        `serving_endpoints(...)` (default: the embedding signatures);
      * may have an online linear probe (`init_probe` in its constructor,
        `probe_loss` in its step, "probe" in `SUB_MODELS`; see
        `keras_ssl.models.online_probe`): its `probe_loss` and `probe_accuracy`
        join the metrics and the export serves `classify`.

    Models are built from the start and by `build()`: a model left unbuilt
    after `fit` with a custom `train_step` loses its optimizer state silently
    when saved to `.keras`.
    """

    SUB_MODELS = ("encoder",)
    # The names of the metrics the step reports, in the order of the logs (see above).
    TRACKED = ()
    # The `keras_ssl.modalities` name of its inputs: the modality checks a batch
    # (`check_batch`), converts it for the encoder, makes a zero input for shape
    # inference and gives the default signatures (the input adapter).
    MODALITY = "image"
    # True for models with a pair decision (`verify`) whose threshold the
    # evaluator calibrates and the exporter stores.
    supports_threshold = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.TRACKED}

    @property
    def metrics(self):
        """The trackers of `TRACKED`, then the online probe's (`probe_loss`, `probe_accuracy`) if it has one."""
        return list(self.trackers.values()) + self.probe_metrics()

    def _children(self):
        return tuple(getattr(self, name, None) for name in self.SUB_MODELS)

    def build(self, input_shape=None):
        for model in self._children():
            if model is not None and not model.built:
                model.build((None,) + tuple(model.input_shape[1:]))
        self.built = True

    def predict(self, x, *args, **kwargs):
        """Keras's `predict`; an array, tensor or `tf.data` batch the model does not take
        is refused first, in one `UserError` (see `check_batch`), before Keras traces
        its step: Keras wraps such an error in its "Exception encountered when
        calling" block, and a step retraced for a wrong rank forgets the input's rank,
        breaking every later `predict`, right inputs included."""
        spec = x.element_spec if isinstance(x, tf.data.Dataset) else x
        if isinstance(spec, tuple) and spec:
            spec = spec[0]
        try:
            shape, dtype = tf.TensorShape(spec.shape), tf.as_dtype(spec.dtype)
        except (AttributeError, TypeError, ValueError):  # generators, PyDatasets: checked in the step
            shape = dtype = None
        if shape is not None and shape.rank is not None:  # an unknown rank is checked in the step
            self.check_batch(shape, dtype)
        return super().predict(x, *args, **kwargs)

    def predict_step(self, data):
        x, _ = split_data(data)
        return self(self.checked_inputs(x), training=False)

    def checked_inputs(self, x):
        """`x` as a tensor if `check_batch` accepts it (a batch whose rank a retraced
        step forgot gets it back, checked when the step runs)."""
        if isinstance(x, (tuple, list, dict)):
            raise UserError(f"{type(self).__name__} takes one batch of inputs, got a {type(x).__name__}")
        x = tf.convert_to_tensor(x)
        if x.shape.rank is None:
            x = tf.ensure_shape(x, [None] * self.input_modality().input_rank)
        self.check_batch(x.shape, x.dtype)
        return x

    def check_batch(self, shape, dtype):
        """One `UserError` unless `shape`/`dtype` is a batch of the model's modality
        (`MODALITY`; images: `[batch, H, W, C]`, uint8 or float in [0, 1], with the
        encoder's channels); see `keras_ssl.modalities`' `check_batch`."""
        self.input_modality().check_batch(self, shape, dtype)

    def fit(self, x=None, y=None, *args, sample_weight=None, class_weight=None, **kwargs):
        """Keras's `fit`; `sample_weight`/`class_weight` are refused (Keras drops a
        sample weight silently when `y` is None; see `split_data`). A `tf.data`
        pipeline (the batch builders' output) shuffles itself: Keras ignores `shuffle`
        for it, so it is not passed (Keras 3 warns about its own default otherwise)."""
        if sample_weight is not None or class_weight is not None:
            raise UserError(_NO_SAMPLE_WEIGHT)
        if isinstance(x, tf.data.Dataset) and not args:
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, **kwargs)

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

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
                **kwargs):
        """Keras's `compile` with an optimizer only: a `loss`, `loss_weights`, `metrics`
        or `weighted_metrics` is refused here, in one `UserError`, since the method
        computes its own loss and metrics and ignoring the compiled ones would mislead.
        Nothing is kept from a refused call, so a later `compile(optimizer=...)` works
        (Keras 3.15's `compile` keeps an earlier call's loss and metrics when they are
        not given again, so a refusal at `fit` could not be recovered from)."""
        given = [name for name, value in (("loss", loss), ("loss_weights", loss_weights), ("metrics", metrics),
                                          ("weighted_metrics", weighted_metrics)) if value is not None]
        if given:
            raise UserError(f"{type(self).__name__} computes its own loss and metrics "
                            f"({', '.join(m.name for m in self.metrics)}); compile it with an optimizer only, "
                            f"e.g. model.compile(optimizer=\"adam\"), not {', '.join(f'{g}=' for g in given)}")
        super().compile(optimizer=optimizer, **kwargs)
        self._compile_loss = self._compile_metrics = None
        from keras_ssl.models.hooks import exclude_from_weight_decay

        if self.optimizer is not None and not self.optimizer.built:
            exclude_from_weight_decay(self.optimizer, self.parameter_groups())

    def compile_from_config(self, config):
        """What Keras does when loading a compiled `.keras` file (it skips a model whose
        `compile` is overridden, which would drop the optimizer and its state)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _logs(self):
        """Metric results; rank 1 under multi-worker, where Keras's
        `reduce(..., axis=0)` of the logs fails on scalars (the second failure)."""
        logs = {m.name: m.result() for m in self.metrics}
        if in_multi_worker_mode():
            logs = {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs

    # -- the step ----------------------------------------------------------

    def method_loss(self, data, training):
        """This replica's loss for one batch, scaled so that the sum over
        replicas is the loss of the global batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement method_loss(data, training)")

    def after_apply(self):
        """Called after every optimizer step (inside the replica context), after the
        momentum pairs are updated."""

    # -- hooks: parameter groups, momentum pairs (keras_ssl.models.hooks) ---------

    # the training steps of the run (set by keras_ssl.training): the momentum schedule's length
    total_steps = None

    def parameter_groups(self):
        """`ParameterGroup`s of trainable variables treated apart: by default the online
        probe's, without weight decay (a linear evaluation has none)."""
        return self.probe_parameter_groups()

    def momentum_pairs(self):
        """`MomentumPair`s (online, target) updated after every step; none by default."""
        return []

    def _scaled_gradients(self, gradients, variables):
        from keras_ssl.models.hooks import gradient_scales

        scales = gradient_scales(self.parameter_groups())
        return [g if g is None or id(v) not in scales else g * scales[id(v)] for g, v in zip(gradients, variables)]

    def _update_momentum_pairs(self):
        from keras_ssl.models.hooks import momentum_tau, update_momentum_pair

        for pair in self.momentum_pairs():
            update_momentum_pair(pair, momentum_tau(self.optimizer.iterations, self.total_steps, pair.base_tau,
                                                    pair.final_tau))

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.method_loss(data, training=True)
            if self.losses:  # regularisers, counted once over the replicas
                loss = loss + tf.add_n(self.losses) / tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = self._scaled_gradients(tape.gradient(scaled, variables), variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_momentum_pairs()
        self.after_apply()
        return self._logs()

    def test_step(self, data):
        self.method_loss(data, training=False)
        return self._logs()

    # -- what it computes and serves ----------------------------------------

    def input_modality(self):
        """The `Modality` of the model's inputs (`MODALITY`)."""
        from keras_ssl import modalities

        return modalities.get(self.MODALITY)

    def representation(self, images, training=False):
        """The representation to keep, `[B, D]`, of a batch (images: uint8 or float in [0, 1])."""
        return self.encoder(self.input_modality().as_model_input(images), training=training)

    def call(self, images, training=False):
        """`representation(images)`: what `predict` returns."""
        return self.representation(images, training=training)

    def representation_dim(self, input_shape):
        """D, the width of `representation` for inputs of `input_shape` (images: H, W, C)."""
        return int(self.representation(self.input_modality().zero_input(input_shape)).shape[-1])

    def serving_endpoints(self, input_shape, threshold=None):
        """The signatures of the export, see `keras_ssl.models.endpoints`.

        By default the modality's embedding signatures (images: `serving_default`
        and `embed_pixels`): the L2-normalised float32 `representation`.
        `threshold` is the decision threshold of a `verify` signature (models with
        `supports_threshold`).
        """
        if threshold is not None:
            raise UserError(f"a threshold only applies to models with a verify signature (Siamese, triplet), "
                            f"not {type(self).__name__}")

        def embed(images):
            return tf.math.l2_normalize(tf.cast(self.representation(images), tf.float32), axis=-1)

        return (self.input_modality().embedding_endpoints(embed, self.representation_dim(input_shape))
                + self.probe_endpoints())

    # -- saving --------------------------------------------------------------

    def get_config(self):
        """Keras's config, every sub-model of `SUB_MODELS` serialised, and the constructor
        arguments the model keeps under their own names (`constructor_config`)."""
        config = super().get_config()
        for name in self.SUB_MODELS:
            model = getattr(self, name, None)
            config[name] = keras.saving.serialize_keras_object(model) if model is not None else None
        config.update(constructor_config(self, skip=self.SUB_MODELS))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in cls.SUB_MODELS:
            if config.get(name) is not None:
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)
