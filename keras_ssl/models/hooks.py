"""Two hooks of the method contract that the next methods need: parameter groups and
momentum (teacher) pairs. `MethodModel` applies both; a method declares them by
overriding `parameter_groups()` and `momentum_pairs()`.

* A `ParameterGroup` is a named set of trainable variables with its own treatment:
  `gradient_scale` multiplies their gradients before the optimizer sees them (wav2vec
  2.0 scales the feature encoder's by 0.1, fairseq's `feature_grad_mult`), and
  `weight_decay=False` keeps them out of weight decay (and out of LARS's trust ratio),
  as for an online linear probe: a linear evaluation has no weight decay.
* A `MomentumPair` is an online network and its target (teacher): after every
  optimizer step `target <- tau * target + (1 - tau) * online`, with `tau` rising from
  `base_tau` to `final_tau` on a cosine over training, as in BYOL (Grill et al. 2020,
  base 0.996) and solo-learn's `BaseMomentumMethod`.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ParameterGroup:
    """`variables` (a model's trainable variables) with a `gradient_scale` and whether
    they take `weight_decay`."""

    name: str
    variables: tuple
    gradient_scale: float = 1.0
    weight_decay: bool = True


@dataclasses.dataclass(frozen=True)
class MomentumPair:
    """`target` follows `online` (two models or layers with the same variables, in the
    same order) by an exponential moving average; see the module docstring."""

    online: object
    target: object
    base_tau: float = 0.996  # BYOL's
    final_tau: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.base_tau <= self.final_tau <= 1.0:
            raise ValueError(f"momentum needs 0 <= base_tau <= final_tau <= 1, got {self.base_tau}, "
                             f"{self.final_tau}")


def momentum_tau(step, total_steps, base_tau, final_tau):
    """BYOL's schedule: `final - (final - base) * (cos(pi * step / total) + 1) / 2`;
    `base_tau` throughout when `total_steps` is unknown (None). Works on tensors."""
    if not total_steps:
        return base_tau
    from keras import ops

    progress = ops.minimum(ops.cast(step, "float32") / float(total_steps), 1.0)
    return final_tau - (final_tau - base_tau) * (ops.cos(math.pi * progress) + 1.0) / 2.0


def update_momentum_pair(pair, tau):
    """`target <- tau * target + (1 - tau) * online`, variable by variable (weights and
    non-trainable state such as batch-norm statistics alike)."""
    online, target = pair.online.weights, pair.target.weights
    if len(online) != len(target):
        raise ValueError(f"a momentum pair needs networks with the same variables, got {len(online)} and "
                         f"{len(target)}")
    for o, t in zip(online, target):
        t.assign(tau * t + (1.0 - tau) * o)


def gradient_scales(groups):
    """`{id(variable): scale}` for the variables of groups whose scale is not 1 (a
    variable in two groups is refused)."""
    scales, seen = {}, set()
    for group in groups:
        for variable in group.variables:
            if id(variable) in seen:
                raise ValueError(f"variable {variable.path} is in two parameter groups")
            seen.add(id(variable))
            if group.gradient_scale != 1.0:
                scales[id(variable)] = float(group.gradient_scale)
    return scales


def exclude_from_weight_decay(optimizer, groups):
    """Tells `optimizer` (LARS, or a Keras optimizer with weight decay; inside a loss
    scale optimizer too) to skip the variables of groups without weight decay. Call it
    before the optimizer is built."""
    variables = [v for g in groups if not g.weight_decay for v in g.variables]
    if not variables or optimizer is None:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(inner, "exclude_variables"):  # keras_ssl.optimizers.LARS
        inner.exclude_variables(variables)
    else:
        inner.exclude_from_weight_decay(var_list=variables)
