"""A method's hyper-parameters, declared once.

Each method declares a frozen dataclass of its options (``Method.Options``). A field made with
``option`` carries its command-line flag(s), its valid values and its help; a field made with
``derived`` has no flag of its own (the method's command line decides it from other flags, e.g.
BCCL's warm-up follows ``--warmup_epochs``). From that one declaration come:

* the flags, with the default the run will really use in ``--help`` (``add_arguments``);
* the values from parsed flags (``from_args``);
* the validation, whether the values come from flags, from code or from a checkpoint
  (``__post_init__``, one line naming the flag, raised as ``ConfigError``);
* the checkpoint's constructor arguments (``as_kwargs``) and the rebuild (``Options(**kwargs)``).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

from utils.config import ConfigError, Number, add_bool_flag


def option(default: Any, *flags: str, valid: Optional[Number] = None, choices: Optional[Sequence[str]] = None,
           help: str = "", flag: Optional[Callable[[str], Any]] = None, flag_default: Any = None,
           convert: Optional[Callable[[Any], Any]] = None) -> Any:
    """A field set by ``flags`` (the first one names the argparse destination).

    ``valid`` (a Number) or ``choices`` bound its values; a bool default makes a True/False flag.
    Where the flag speaks another language than the field (LCSL's ``--fc_norm 1.9`` means
    True), ``flag`` is its argparse type, ``flag_default`` its default and ``convert`` turns
    its value into the field's.
    """
    return field(default=default, metadata=dict(flags=flags, valid=valid, choices=choices, help=help,
                                                 flag=flag, flag_default=flag_default, convert=convert))


def derived(default: Any = dataclasses.MISSING, *, valid: Optional[Number] = None,
            choices: Optional[Sequence[str]] = None, factory: Optional[Callable[[], Any]] = None) -> Any:
    """A field without a flag of its own, validated like the others."""
    metadata = dict(flags=(), valid=valid, choices=choices)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def destination(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options; a method without hyper-parameters uses it as is."""

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            value, meta = getattr(self, spec.name), spec.metadata
            name = meta.get("flags", ())[0] if meta.get("flags") else spec.name
            if meta.get("valid") is not None:
                meta["valid"].check(name, value)
            if meta.get("choices") is not None and value not in meta["choices"]:
                raise ConfigError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got '{value}'")
            if isinstance(spec.default, bool) and not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")

    @classmethod
    def flagged(cls) -> list:
        """The fields this class declares flags for (inherited ones belong to the parent's group)."""
        inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)}
        return [f for f in dataclasses.fields(cls) if f.metadata.get("flags") and f.name not in inherited]

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        for spec in cls.flagged():
            meta, flags = spec.metadata, spec.metadata["flags"]
            dest = destination(flags[0])
            if meta["convert"] is not None:
                group.add_argument(*flags, dest=dest, type=meta["flag"], default=meta["flag_default"],
                                   help=f"{meta['help']} (default: {meta['flag_default']})")
            elif isinstance(spec.default, bool):
                add_bool_flag(group, *flags, default=spec.default, help=meta["help"])
            else:
                group.add_argument(*flags, dest=dest, type=meta["valid"] or type(spec.default),
                                   choices=meta["choices"], default=spec.default,
                                   help=f"{meta['help']} (default: {spec.default})")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **decided: Any) -> "MethodOptions":
        """The flagged fields from parsed flags; ``decided`` gives the derived ones."""
        values = {}
        for spec in dataclasses.fields(cls):
            flags = spec.metadata.get("flags")
            if flags and spec.name not in decided:
                value = getattr(args, destination(flags[0]))
                convert = spec.metadata.get("convert")
                values[spec.name] = convert(value) if convert is not None else value
        return cls(**values, **decided)

    def as_kwargs(self) -> Dict[str, Any]:
        """The method's constructor arguments, as its checkpoints record them."""
        return dataclasses.asdict(self)
