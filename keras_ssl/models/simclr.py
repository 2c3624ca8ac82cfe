"""SimCLR (Chen et al. 2020) as a `keras.Model` with its own train/test steps."""

import dataclasses

import keras
import tensorflow as tf

from keras_ssl import losses
from keras_ssl.data.augment import get_preset, simclr_augment, to_float01
from keras_ssl.errors import UserError
from keras_ssl.heads import projection_head
from keras_ssl.models.global_batch import global_batch_size, split_data
from keras_ssl.models.hyper_parameters import option_arguments
from keras_ssl.models.method_model import MethodModel
from keras_ssl.models.registry import Method, TrainingData, epoch_steps, option, register


@dataclasses.dataclass
class SimCLROptions:
    """SimCLR's hyper-parameters. Sources: temperature 0.5 and a 128-d output
    (Chen et al. 2020, B.9 for CIFAR-10); a 2-layer projection MLP whose hidden
    width is the feature width (SimCLR v1); the online probe is SimCLR's
    in-run linear evaluation on `stop_gradient(h)`."""

    temperature: float = option(0.5, "NT-Xent temperature (SimCLR CIFAR-10: 0.5)", check=lambda v: v > 0,
                                requirement="> 0")
    projection_dim: int = option(128, "projection head output size (SimCLR: 128)", check=lambda v: v >= 1,
                                 requirement=">= 1")
    projection_hidden_dim: int | None = option(None, "projection hidden size (default: the feature size)",
                                               check=lambda v: v >= 1, requirement=">= 1")
    projection_layers: int = option(2, "projection head depth in Dense layers (SimCLR v1: 2)",
                                    check=lambda v: v >= 1, requirement=">= 1")
    online_probe: bool = option(True, "train a linear probe on frozen features in-run (labelled datasets)")


@keras.saving.register_keras_serializable(package="keras_ssl")
class SimCLR(MethodModel):
    """Contrastive learning of visual representations (SimCLR).

    Two views of each image go through the shared `encoder` f and the
    `projector` g; NT-Xent (`keras_ssl.losses.nt_xent`) pulls the two views
    of an image together against the other 2N - 2 views of the global batch
    (gathered from every replica). The representation to keep is the encoder
    output h = f(x), not g(h).

    `fit()` accepts batches of
      * images `x` (uint8 [0, 255] or float [0, 1], `[B, H, W, C]`): the two
        views are made inside the step with `augment` (a preset name or
        `AugmentConfig`), seeded by `seed` and the step counter;
      * view pairs `(view_a, view_b)` made elsewhere (e.g. `data.simclr_views`);
    each optionally with integer labels `y`. With labels and `num_classes`, an
    online linear probe on `stop_gradient(h)` of the first augmented view is
    trained alongside (SimCLR's in-run probe, which its reference code trains
    on the augmented batch; at inference it reads unaugmented images); its loss is added to the total and `probe_accuracy` is
    reported.

    Metrics: `loss` (NT-Xent), `contrastive_accuracy` (fraction of anchors
    whose positive has the largest logit), `output_std` (std over the batch of
    the L2-normalised projections, averaged over dimensions: about 1/sqrt(d)
    when healthy, 0 on collapse), and with the probe `probe_loss`,
    `probe_accuracy`.

    Loss scaling under R replicas: each replica returns
    `sum(local anchor losses) / (2 * N_global)`, and `apply_gradients` sums the
    replicas' gradients, so loss and gradients equal one device on the whole
    batch, also when the split is uneven.

    Defaults: `SimCLROptions`'s (temperature 0.5, SimCLR CIFAR-10), projection
    to 128 dims (`projection_head`).
    """

    SUB_MODELS = ("encoder", "projector", "probe")
    TRACKED = ("loss", "contrastive_accuracy", "output_std")

    def __init__(self, encoder, projector=None, temperature=SimCLROptions.temperature, num_classes=None,
                 augment="imagenet", seed=0, probe=None, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise UserError(f"temperature must be > 0, got {temperature}")
        self.encoder = encoder
        feature_dim = int(encoder.output_shape[-1])
        self.projector = projector if projector is not None else projection_head(feature_dim)
        self.temperature = float(temperature)
        self.augment_config = get_preset(augment)
        self._augment_name = augment if isinstance(augment, str) else None
        self.seed = int(seed)
        self.init_probe(feature_dim, num_classes, probe)
        # Built from the start: a custom train_step leaves a model unbuilt after
        # fit, and saving an unbuilt model silently drops optimizer state.
        self.build()

    def _views(self, x):
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise UserError(f"SimCLR expects images or a pair (view_a, view_b), got {len(x)} inputs")
            return to_float01(x[0]), to_float01(x[1])
        step = tf.cast(self.optimizer.iterations if self.optimizer is not None else 0, tf.int64)
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group if ctx is not None else 0, tf.int64)
        base = (step * 64 + replica) * 2
        seed_a = tf.stack([tf.constant(self.seed, tf.int64), base])
        seed_b = tf.stack([tf.constant(self.seed, tf.int64), base + 1])
        return (simclr_augment(x, seed_a, self.augment_config),
                simclr_augment(x, seed_b, self.augment_config))

    def method_loss(self, data, training):
        x, y = split_data(data)
        self.refuse_labels_without_probe(y, "learns without labels")
        view_a, view_b = self._views(x)
        n_local = tf.shape(view_a)[0]
        h = self.encoder(tf.concat([view_a, view_b], axis=0), training=training)
        z = self.projector(h, training=training)
        z_a, z_b = tf.split(z, 2, axis=0)
        terms, correct = losses.nt_xent_terms(z_a, z_b, self.temperature)
        n_global = global_batch_size(n_local)
        # Summed over replicas this is the mean over all 2 * N_global anchors.
        loss = tf.reduce_sum(terms) / tf.cast(2 * n_global, tf.float32)
        local_mean = tf.reduce_mean(terms)
        z_norm = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=-1)
        output_std = tf.reduce_mean(tf.math.reduce_std(z_norm, axis=0))
        weight = tf.cast(2 * n_local, tf.float32)
        self.trackers["loss"].update_state(local_mean, sample_weight=weight)
        self.trackers["contrastive_accuracy"].update_state(tf.reduce_mean(tf.cast(correct, tf.float32)),
                                                           sample_weight=weight)
        self.trackers["output_std"].update_state(output_std)
        return loss + self.probe_loss(h[:n_local], y, training)  # the first view's features

    def get_config(self):
        """The base's config and `augment`: the preset's name, or the `AugmentConfig`'s fields."""
        config = super().get_config()
        config["augment"] = self._augment_name or dict(vars(self.augment_config))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("augment"), dict):
            from keras_ssl.data.augment import AugmentConfig

            aug = {k: tuple(v) if isinstance(v, list) else v for k, v in config["augment"].items()}
            config["augment"] = AugmentConfig(**aug)
        return super().from_config(config)


def _build(run, options, encoder, dataset, stage=None):
    feature_dim = int(encoder.output_shape[-1])
    projector = projection_head(feature_dim, options.projection_hidden_dim, options.projection_dim,
                                options.projection_layers)
    num_classes = dataset.num_classes if (options.online_probe and dataset.labelled) else None
    return SimCLR(encoder, projector, num_classes=num_classes, augment=run.augment, seed=run.seed,
                  **option_arguments(options, SimCLR))


def _training_data(run, options, split, stage=None):
    from keras_ssl.data import simclr_views

    steps = epoch_steps(split, run.batch_size)
    data = simclr_views(split, run.batch_size, run.augment, seed=run.seed, with_labels=options.online_probe)
    return TrainingData(data, steps, run.batch_size)


register(Method(
    name="simclr", summary="SimCLR: NT-Xent between two augmented views (Chen et al. 2020)",
    options=SimCLROptions, build=_build, training_data=_training_data, images_per_example=2,
    requires_augmentation=True,
    smoke_options=dict(augment="fashion_mnist", batch_size=16),
))
