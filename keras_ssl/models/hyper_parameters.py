"""A method's hyper-parameters, declared once: in its options dataclass.

Each hyper-parameter is a field of the method's options dataclass,
`option(default, help, ...)` (its docstring gives the source of the default).
Everything else reads it from there:

* the model's constructor takes the field's default as its own (a dataclass
  field with a default is also a class attribute holding that default), so a
  model made in user code starts where `keras-ssl-train` does::

      @dataclasses.dataclass
      class SimCLROptions:
          temperature: float = option(0.5, "NT-Xent temperature (SimCLR CIFAR-10: 0.5)", ...)

      class SimCLR(MethodModel):
          def __init__(self, encoder, projector=None, temperature=SimCLROptions.temperature, ...):

* the method's `build` passes the options that are constructor arguments with
  `option_arguments(options, SimCLR)`, and only what is no option by hand (the
  encoder, the run's seed, a size read from the dataset);
* `MethodModel.get_config` saves the constructor arguments the model keeps under
  their own names (`constructor_config`), which `from_config` passes back
  (`cls(**config)`); a model writes `get_config` only for a value it keeps in
  another form (SimCLR's `augment`, kept as an `AugmentConfig`).
"""

import dataclasses
import inspect

# The values `constructor_config` saves: what a JSON config holds as it is.
_PLAIN = (str, int, float, bool, type(None))


def constructor_arguments(model_class):
    """The named parameters of `model_class.__init__` (not `self`, `*args` or `**kwargs`), in order."""
    parameters = inspect.signature(model_class.__init__).parameters.values()
    return [p.name for p in parameters
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _plain(value):
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def constructor_config(model, skip=()):
    """`{argument: value}` for every constructor argument of `type(model)` (but those
    in `skip`: its sub-models) that `model` keeps as an attribute of the same name
    with a plain value (a str, number, bool or None, or a tuple or list of them): the
    config from which `type(model)(**config)` makes the same model again. Arguments
    kept otherwise (under another name, or as an object) are the class's own
    `get_config`'s to write."""
    config = {}
    for name in constructor_arguments(type(model)):
        if name in skip or not hasattr(model, name):
            continue
        value = getattr(model, name)
        if _plain(value):
            config[name] = value
    return config


def option_arguments(options, model_class, renamed=None):
    """The fields of the `options` dataclass that set an argument of `model_class`'s
    constructor, as keyword arguments: a field whose name is a constructor argument,
    or whose name `renamed` maps to one (`{"patch_stride": "stride"}`: an option
    named otherwise than the argument it sets, its flag saying more)."""
    renamed = dict(renamed or {})
    arguments = set(constructor_arguments(model_class))
    fields = {field.name for field in dataclasses.fields(options)}
    for option, argument in renamed.items():  # a misspelt name is a bug of the method's file
        if option not in fields or argument not in arguments:
            raise TypeError(f"cannot pass option {option!r} of {type(options).__name__} as argument {argument!r} "
                            f"of {model_class.__name__}()")
    kwargs = {}
    for field in dataclasses.fields(options):
        argument = renamed.get(field.name, field.name)
        if argument in arguments:
            kwargs[argument] = getattr(options, field.name)
    return kwargs
