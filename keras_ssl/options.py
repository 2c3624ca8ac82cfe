"""Declared settings: a dataclass field per hyper-parameter, carrying its flag.

A method's options (`keras_ssl.models.registry`) and a modality's settings
(`keras_ssl.modalities`) are dataclasses whose fields are made with `option`:
the default, the help text the generated flag shows, the allowed `choices` and
a `check` with the `requirement` it states. The binaries generate one flag per
field, `TrainConfig` spells them flat (as `config.json` does), and
`validate_options` checks them; none of these lists the fields by hand.

    @dataclasses.dataclass
    class SimCLROptions:
        temperature: float = option(0.5, "NT-Xent temperature (SimCLR CIFAR-10: 0.5)",
                                    check=lambda v: v > 0, requirement="> 0")
"""

import dataclasses
import typing

from keras_ssl.errors import UserError

NOT_STORED = object()


def option(default, help, choices=None, check=None, requirement=None, stored_default=NOT_STORED):
    """A declared hyper-parameter: a dataclass field carrying its flag help text,
    its allowed `choices` and a `check(value) -> bool` with the `requirement`
    it states (e.g. "> 0"); `None` values are not checked (None means "the
    default of the method or the data" where a field allows it). `stored_default`:
    for an option added later, the value that reproduces runs whose `config.json`
    predates it (used when such a file is read)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": tuple(choices) if choices else None, "check": check, "requirement": requirement,
        "stored_default": stored_default})


def validate_options(options):
    """Raises `UserError` naming the first field outside its choices or failing its check."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise UserError(f"{f.name} must be {f.metadata['requirement']}, got {value!r}")
    return options


def option_type(options_class, name):
    """The Python type of a field (`int`, `float`, `bool` or `str`; `X | None` -> `X`)."""
    hint = typing.get_type_hints(options_class)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def make_options(options_class, values, owner):
    """`options_class(**values)`, a key that is not one of its fields refused with a
    `UserError` naming `owner` ("method simclr") and the fields it has."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(options_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{unknown[0]} is not an option of {owner} (its options: "
                        f"{', '.join(sorted(known)) or 'none'})")
    return options_class(**values)


def stored_defaults(options_class, given):
    """`{field: stored_default}` for the fields of `options_class` missing from `given`
    that declare one (a stored run predating them keeps its old behaviour)."""
    return {f.name: f.metadata["stored_default"] for f in dataclasses.fields(options_class)
            if f.name not in given and f.metadata.get("stored_default", NOT_STORED) is not NOT_STORED}
