"""LARS, warmup + cosine decay, and learning-rate scaling by the global batch."""

import math

import keras
from keras import ops

from keras_ssl.errors import UserError


@keras.saving.register_keras_serializable(package="keras_ssl")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), as SimCLR uses it.

    For each variable `w` with gradient `g` (SimCLR's `lars_optimizer.py`):

        g     <- g + weight_decay * w                       (unless excluded)
        ratio <- eta * ||w|| / ||g||  if ||w|| > 0 and ||g|| > 0, else 1
                                                             (1 if excluded)
        v     <- momentum * v + lr * ratio * g
        w     <- w - v          (nesterov: w - (momentum * v + lr * ratio * g))

    Defaults: `momentum=0.9`, `eta=0.001` (trust coefficient), `weight_decay=1e-6`
    (SimCLR's ImageNet setting). Weight decay and the trust ratio are skipped
    for biases and BatchNorm/LayerNorm parameters, as in SimCLR. Keras 3
    variable names no longer carry the layer's name, so the rule is by shape:
    every variable of rank <= 1 (biases, BN gamma/beta) is excluded. Use
    `exclude_variables(...)` to exclude more (e.g. every variable a given layer
    owns); the exclusion list is fixed once the optimizer is built.
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay=1e-6, eta=0.001,
                 nesterov=False, exclude_rank_at_most=1, name="lars", **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"LARS momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0 or eta <= 0:
            raise UserError(f"LARS needs weight_decay >= 0 and eta > 0, got {weight_decay}, {eta}")
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self.exclude_rank_at_most = int(exclude_rank_at_most)
        self._excluded_ids = set()

    def exclude_variables(self, variables):
        """Excludes these variables from weight decay and trust-ratio adaptation."""
        if self.built:
            raise RuntimeError("exclude_variables() must be called before the optimizer is built")
        # Keyed as Keras keys the optimizer's own slots (`_var_key`): `update_step` receives the
        # backend variable (a tf.Variable, a replica's component under a strategy), not the
        # Keras variable the caller holds, so `id()` would never match there.
        self._excluded_ids.update(self._var_key(v) for v in variables)

    def is_excluded(self, variable):
        """True when `variable` gets neither weight decay nor layer adaptation."""
        return len(variable.shape) <= self.exclude_rank_at_most or self._var_key(variable) in self._excluded_ids

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._velocities = self.add_optimizer_variables(var_list, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        v = self._velocities[self._get_variable_index(variable)]
        if self.is_excluded(variable):
            scaled_lr = lr
        else:
            if self.lars_weight_decay:
                g = g + self.lars_weight_decay * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            ratio = ops.where(
                w_norm > 0, ops.where(g_norm > 0, self.eta * w_norm / ops.maximum(g_norm, 1e-30), 1.0), 1.0
            )
            scaled_lr = lr * ratio
        self.assign(v, self.momentum * v + scaled_lr * g)
        if self.nesterov:
            self.assign_sub(variable, self.momentum * v + scaled_lr * g)
        else:
            self.assign_sub(variable, v)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum, weight_decay=self.lars_weight_decay, eta=self.eta,
            nesterov=self.nesterov, exclude_rank_at_most=self.exclude_rank_at_most,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then cosine decay to
    `peak * final_fraction` at `total_steps` (SimCLR: 10 warmup epochs, cosine
    decay to 0, without restarts; Loshchilov & Hutter 2017).
    """

    def __init__(self, peak, total_steps, warmup_steps=0, final_fraction=0.0):
        if total_steps <= 0 or warmup_steps < 0:
            raise UserError(f"schedule needs total_steps > 0 and warmup_steps >= 0, got "
                            f"{total_steps}, {warmup_steps}")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, total_steps))
        self.final_fraction = float(final_fraction)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.peak * step / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = self.peak * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return dict(peak=self.peak, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    final_fraction=self.final_fraction)


LR_SCALINGS = ("linear", "sqrt", "none")  # scale_learning_rate's rules


def scale_learning_rate(base_lr, global_batch, scaling="linear"):
    """The peak learning rate for a global batch (SimCLR Appendix B.1).

    `linear`: `base_lr * global_batch / 256`; `sqrt`: `base_lr * sqrt(global_batch)`
    (SimCLR: 0.075 * sqrt(B) is better for small batches / short runs);
    `none`: `base_lr` unchanged.
    """
    if global_batch < 1:
        raise UserError(f"global batch must be >= 1, got {global_batch}")
    if scaling == "linear":
        return base_lr * global_batch / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if scaling == "none":
        return base_lr
    raise UserError(f"unknown learning-rate scaling {scaling!r}; choose linear, sqrt or none")


OPTIMIZERS = ("lars", "adam", "adamw", "sgd")


def build_optimizer(name, learning_rate, weight_decay=1e-6, momentum=0.9):
    """An optimizer by name; `learning_rate` may be a schedule.

    `adamw` uses Keras's decoupled weight decay; `sgd` uses Nesterov-free
    momentum with no weight decay.
    """
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
