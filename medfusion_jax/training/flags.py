"""Command-line flags derived from the configuration dataclasses: one :class:`Flag` per setting.

A flag names the configuration field it sets (``"run.batch_size"``) and its help; its name
(``--batch-size``), how its text is parsed (from the field's annotation: ``int``, ``float``, ``str``,
``bool`` as a switch, ``tuple[int, ...]`` as ``64,128,256``) and its destination follow from that
field, so the dataclass stays the one place that says what a setting is, and its default. A flag
that is not given leaves the preset's value (:mod:`~medfusion_jax.training.presets`): defaults live
in the configurations, never in argparse.

Why not a library (``tyro``, ``simple_parsing``, ``ml_collections``): they name flags after the
nesting (``--run.batch-size``) and would rename every public flag of ``train.*``, whose names are
kept; a table of (field, help) and the 100 lines here give the derived flags without a new dependency.

Validation (:func:`medfusion_jax.config.validate`) names fields; :func:`flag_names` maps them back to
these flags for the command lines' messages.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Flag:
    """A command-line flag that sets the configuration field ``field`` (a dotted path)."""

    field: str
    help: str
    #: The flag's name; by default ``--`` and the field's last part with dashes (``--batch-size``).
    name: str | None = None
    #: Text -> value; by default from the field's annotation.
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: A switch sets this value (booleans: True); ``--sync-checkpoints`` sets ``run.async_checkpoints`` False.
    const: Any = True
    #: A boolean field given as ``--x`` / ``--no-x`` (either way overrides the preset).
    negatable: bool = False
    #: Fields reset to None when this flag is given (``--steps`` replaces the preset's ``--epochs``).
    clears: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return self.name or "--" + self.field.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def int_tuple(text: str) -> tuple[int, ...]:
    """'64,128,256,512' -> (64, 128, 256, 512)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def field_type(config_class: type, path: str) -> Any:
    """The annotation of ``path`` in ``config_class`` (``X | None`` unwrapped), following nested dataclasses."""
    cls: Any = config_class
    for part in path.split("."):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise KeyError(f"{config_class.__name__} has no field {path!r}")
        cls = _unwrap_optional(hints[part])
    return cls


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    if annotation in (int, float, str):
        return annotation
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation)[:2] == (int, Ellipsis):
        return int_tuple
    raise TypeError(f"no flag parser for {annotation!r}; give Flag(parse=...)")


def add_flags(group: argparse._ActionsContainer, config_class: type, flags: Iterable[Flag]) -> None:
    """Adds ``flags`` to ``group`` (a parser or an argument group); every default is None (= not given)."""
    for flag in flags:
        annotation = field_type(config_class, flag.field)
        common = dict(dest=flag.dest, help=flag.help, default=None)
        if annotation is bool and flag.negatable:
            group.add_argument(flag.flag, action=argparse.BooleanOptionalAction, **common)
        elif annotation is bool or flag.const is not True:
            group.add_argument(flag.flag, action="store_const", const=flag.const, **common)
        else:
            group.add_argument(flag.flag, type=flag.parse or _parser_for(annotation), choices=flag.choices,
                               metavar=flag.metavar, **common)


def replace_field(config: Any, path: str, value: Any) -> Any:
    """``config`` with the field at dotted ``path`` set to ``value`` (nested frozen dataclasses)."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    inner = getattr(config, head)
    if inner is None:
        raise ValueError(f"`{head}` is not part of this configuration, so `{path}` cannot be set")
    return dataclasses.replace(config, **{head: replace_field(inner, rest, value)})


def apply_flags(config: Any, args: argparse.Namespace, flags: Sequence[Flag]) -> Any:
    """``config`` with every given flag's value (in table order; a flag's ``clears`` are reset to None)."""
    for flag in flags:
        value = getattr(args, flag.dest)
        if value is None:
            continue
        for cleared in flag.clears:
            config = replace_field(config, cleared, None)
        config = replace_field(config, flag.field, value)
    return config


def given(args: argparse.Namespace, flags: Iterable[Flag]) -> list[str]:
    """The names of the ``flags`` that were given."""
    return [flag.flag for flag in flags if getattr(args, flag.dest) is not None]


def flag_names(*tables: Iterable[Flag]) -> Mapping[str, str]:
    """field path -> flag name, for the messages of :class:`medfusion_jax.config.ConfigError`."""
    return {flag.field: flag.flag for table in tables for flag in table}
