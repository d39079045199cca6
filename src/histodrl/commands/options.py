"""The options model: one frozen dataclass per command, from which everything else is generated.

A command's options are a ``@options_class`` dataclass whose fields are declared with
:func:`option` (default, help text, flag, allowed values, a range check, whether the value may
change when a run is resumed). From that one declaration come:

* the command's ``argparse`` parser (:func:`add_arguments`), including ``--config FILE.yaml``;
* the typed object a command runs with (:func:`from_sources`): field defaults, then the YAML file,
  then what the user typed, each value converted to the field's type and checked, with one-line
  errors naming the option (``--width 0: expected a number > 0``) or the file and key
  (``c.yaml: max_steps: 2.7 is not an integer``);
* the ``config.yaml`` a run writes (:func:`to_config`) and reads back (:func:`from_config`).

This module imports neither torch nor Lightning (building the parser runs on every ``histodrl``
call). Code outside ``histodrl.commands`` reads options as attributes (``options.lr``), never by
string key.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar

from histodrl.errors import UserInputError

T = TypeVar("T")

#: Keys a run writes into its ``config.yaml`` for the reader that are not options (derived from
#: the options and the data) or that older versions wrote there (``explicit``); skipped when a
#: config is read back. The one definition of "what is not config".
DERIVED_KEYS = frozenset({"total_steps", "data_description"})
LEGACY_KEYS = frozenset({"explicit", "resume", "overwrite", "config", "debug", "command"})


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A predicate on a value with the words that say what was expected."""

    ok: Callable[[Any], bool]
    expected: str

    def __call__(self, value: Any) -> bool:
        return bool(self.ok(value))


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f"a value >= {low:g}")


def greater(low: float) -> Check:
    return Check(lambda v: v > low, f"a value > {low:g}")


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def ok(v: float) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Check(ok, f"a value in {left}{low:g}, {high:g}{right}")


def fraction() -> Check:
    return within(0.0, 1.0, low_open=True)


def fraction_pair() -> Check:
    return Check(lambda v: 0 < v[0] <= v[1] <= 1, "two numbers 0 < LOW <= HIGH <= 1")


# ------------------------------------------------------------------------------------------------
# Declaring options
# ------------------------------------------------------------------------------------------------


def option(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    short: str | None = None,
    choices: Sequence[Any] | None = None,
    check: Check | None = None,
    runtime: bool = False,
    group: str | None = None,
    metavar: str | None = None,
    positional: bool = False,
    cli: bool = True,
) -> Any:
    """A field of an options class.

    Args:
        default: the default value (omit for a required option).
        help: one line for ``--help``.
        flag: the command-line flag (default ``--name-with-dashes``).
        short: an extra short flag such as ``-o``.
        choices: the allowed values.
        check: a range :class:`Check`, applied after type conversion (``None`` passes).
        runtime: where and how a run executes rather than what it computes; such an option may
            differ when a run is resumed.
        group: the ``--help`` section.
        metavar: the value's name in ``--help``.
        positional: a positional argument instead of a flag.
        cli: False for an option that only a config file or a library caller sets.
    """
    meta = {
        "help": help,
        "flag": flag,
        "short": short,
        "choices": tuple(choices) if choices is not None else None,
        "check": check,
        "runtime": runtime,
        "group": group,
        "metavar": metavar,
        "positional": positional,
        "cli": cli,
    }
    return dataclasses.field(default=default, metadata=meta)


def options_class(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, keyword-only dataclass (fields of base classes come first) whose
    every construction converts and checks its values, so an options object is always valid."""
    cls.__post_init__ = _post_init  # type: ignore[attr-defined]
    return dataclass(frozen=True, kw_only=True)(cls)


def _post_init(self: Any) -> None:
    for spec in specs(type(self)):
        value = convert(spec, getattr(self, spec.name))
        object.__setattr__(self, spec.name, value)
    check = getattr(self, "check_options", None)
    if check is not None:
        check()


@dataclass(frozen=True)
class Spec:
    """What :func:`option` declared about one field, with its resolved type."""

    name: str
    kind: Any
    optional: bool
    default: Any
    meta: Mapping[str, Any]

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def flag(self) -> str:
        return self.meta.get("flag") or "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        """How the option is named in messages: its flag, or its name when positional."""
        return self.name.upper() if self.meta.get("positional") else self.flag


def _field_type(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def specs(cls: type) -> list[Spec]:
    """The declared options of an options class, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional = _field_type(hints[f.name])
        out.append(Spec(f.name, kind, optional, f.default, f.metadata))
    return out


def spec_of(cls: type, name: str) -> Spec:
    return next(s for s in specs(cls) if s.name == name)


# ------------------------------------------------------------------------------------------------
# Converting and checking values
# ------------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A value that does not fit its option (the message says what was expected)."""


def _convert(spec: Spec, value: Any, from_text: bool) -> Any:
    """``value`` as the type of ``spec``; strings are parsed when ``from_text`` (command line)."""
    if value is None:
        if spec.optional:
            return None
        raise _Bad("expected a value")
    kind = spec.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _Bad("expected true or false")
    if kind is int:
        if isinstance(value, str) and from_text:
            try:
                return int(value)
            except ValueError:
                raise _Bad("expected an integer") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad("expected an integer")
    if kind is float:
        # YAML reads 1e-4 (no dot) as a string: numbers written as text are accepted.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _Bad("expected a number") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if math.isnan(value):
                raise _Bad("expected a number")
            return value
        raise _Bad("expected a number")
    if kind is str:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not from_text:
            return str(value)  # e.g. devices: 2 in a YAML file
        raise _Bad("expected a text value")
    if typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (Ellipsis,):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise _Bad("expected one or more values")
        if not all(isinstance(i, str) for i in items):
            raise _Bad("expected text values")
        return tuple(items)
    if typing.get_origin(kind) is tuple:
        parts = value.split(",") if isinstance(value, str) else value
        n = len(typing.get_args(kind))
        if not isinstance(parts, (list, tuple)) or len(parts) != n:
            raise _Bad(f"expected {n} comma-separated numbers")
        try:
            return tuple(float(p) for p in parts)
        except (TypeError, ValueError):
            raise _Bad(f"expected {n} comma-separated numbers") from None
    raise TypeError(f"option {spec.name}: unsupported type {kind!r}")


def show(value: Any) -> str:
    """A value as a user types it (``0.03,0.05``, ``1e-04``)."""
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _checked(spec: Spec, value: Any, where: str) -> Any:
    choices = spec.meta.get("choices")
    if value is not None and choices is not None and value not in choices:
        raise UserInputError(
            f"{where}{show(value)!s}: expected one of {', '.join(map(str, choices))}"
        )
    check = spec.meta.get("check")
    if value is not None and check is not None and not check(value):
        raise UserInputError(f"{where}{show(value)}: expected {check.expected}")
    return value


def convert(spec: Spec, value: Any, *, source: str | None = None, from_text: bool = False) -> Any:
    """``value`` converted to ``spec``'s type and checked; one-line errors name the option.

    ``source`` (a file name) makes messages read ``FILE: key: ...`` instead of ``--flag ...``.
    """
    where = f"{source}: {spec.name}: " if source else f"{spec.label} "
    try:
        converted = _convert(spec, value, from_text)
    except _Bad as exc:
        raise UserInputError(f"{where}{value!r}: {exc}") from None
    return _checked(spec, converted, where)


def build(cls: type[T], values: Mapping[str, Any], *, source: str | None = None) -> T:
    """An options object from a mapping of field names to (unconverted) values.

    Missing fields take their defaults; a missing required one is an error naming its flag.
    Cross-field checks (``check_options`` of the class, when defined) run last.
    """
    kwargs: dict[str, Any] = {}
    for spec in specs(cls):
        if spec.name in values:
            kwargs[spec.name] = convert(spec, values[spec.name], source=source)
        elif spec.required:
            raise UserInputError(f"{spec.label}: required")
    return cls(**kwargs)


def with_values(obj: T, **changes: Any) -> T:
    """A copy of ``obj`` with fields changed, each converted and checked like any other value."""
    return build(type(obj), {**to_values(obj), **changes})


def to_values(obj: Any) -> dict[str, Any]:
    """The fields of an options object as a dict (tuples stay tuples)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# ------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------


def _yaml_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def to_config(obj: Any, derived: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.yaml`` mapping of an options object, plus the run's derived facts."""
    out = {k: _yaml_value(v) for k, v in to_values(obj).items()}
    for key, value in (derived or {}).items():
        if key not in DERIVED_KEYS:
            raise ValueError(f"{key}: not a derived key ({', '.join(sorted(DERIVED_KEYS))})")
        out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; one-line errors for a missing file, bad YAML, not a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{path}: not valid YAML ({first})") from None
    except OSError as exc:
        raise UserInputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of option names to values")
    return data


def config_values(cls: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The option values of a config mapping, keyed by field name.

    Keys may use dashes or underscores (or the flag's own name, e.g. ``lambda`` for ``lambda_``);
    derived and legacy keys are skipped; any other unknown key is an error naming it.
    """
    by_key: dict[str, Spec] = {}
    for spec in specs(cls):
        by_key[spec.name] = spec
        by_key[spec.flag.lstrip("-").replace("-", "_")] = spec
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in DERIVED_KEYS or name in LEGACY_KEYS:
            continue
        if name not in by_key:
            raise UserInputError(f"{source}: unknown option {key!r}")
        out[by_key[name].name] = value
    return out


def from_config(cls: type[T], path: str | Path) -> T:
    """The options object of a run's (or a hand-written) ``config.yaml``."""
    return build(cls, config_values(cls, read_yaml(path), str(path)), source=str(path))


def from_saved(cls: type[T], data: Mapping[str, Any], source: str) -> T:
    """An options object from a saved mapping (a checkpoint's hyper-parameters)."""
    return build(cls, config_values(cls, data, source), source=source)


# ------------------------------------------------------------------------------------------------
# argparse
# ------------------------------------------------------------------------------------------------

CONFIG_DEST = "config"


def _help_text(spec: Spec) -> str:
    text = spec.meta["help"]
    if spec.kind is bool or spec.required or "default" in text:
        return text
    if spec.default is None:
        return text
    return f"{text} (default: {show(spec.default)})"


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, config: bool = True) -> None:
    """Add one argument per option of ``cls`` to ``parser`` (plus ``--config`` when ``config``).

    Arguments have no argparse defaults (``SUPPRESS``), so the parsed namespace holds exactly the
    options the user typed: :func:`from_sources` fills in the rest, and a resumed run knows which
    options were typed.
    """
    groups: dict[str | None, Any] = {None: parser}
    for spec in specs(cls):
        if not spec.meta.get("cli", True):
            continue
        group = spec.meta.get("group")
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        target = groups[group]
        kwargs: dict[str, Any] = {"help": _help_text(spec), "default": argparse.SUPPRESS}
        if spec.meta.get("metavar"):
            kwargs["metavar"] = spec.meta["metavar"]
        variadic = typing.get_args(spec.kind)[1:] == (Ellipsis,)
        if spec.meta.get("positional"):
            if variadic:
                target.add_argument(spec.name, nargs="+", **kwargs)
            else:
                target.add_argument(spec.name, type=_text_parser(spec), **kwargs)
            continue
        names = [spec.flag] + ([spec.meta["short"]] if spec.meta.get("short") else [])
        if spec.kind is bool:
            target.add_argument(*names, dest=spec.name, action="store_true", **kwargs)
            continue
        if variadic:
            kwargs["nargs"] = "+"
        elif spec.meta.get("choices") is not None and "metavar" not in kwargs:
            kwargs["metavar"] = "{" + ",".join(map(str, spec.meta["choices"])) + "}"
        if not variadic:
            kwargs["type"] = _text_parser(spec)
        target.add_argument(*names, dest=spec.name, **kwargs)
    if config:
        parser.add_argument(
            "--config",
            dest=CONFIG_DEST,
            default=argparse.SUPPRESS,
            metavar="FILE.yaml",
            help="YAML file of option values; a run's config.yaml works (typed options win)",
        )


def _text_parser(spec: Spec) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if spec.optional and spec.kind is not str and text.lower() == "none":
            return None
        return convert(spec, text, from_text=True)

    parse.__name__ = spec.name  # argparse names the type in its own messages
    return parse


@dataclass(frozen=True)
class Typed:
    """What the user typed for one command: option values by field name, and the config file."""

    values: Mapping[str, Any]
    config: str | None = None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.values)


def typed_from_namespace(cls: type, namespace: argparse.Namespace) -> Typed:
    """The options of ``cls`` present in a namespace parsed by :func:`add_arguments`."""
    names = {s.name for s in specs(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    return Typed(values, getattr(namespace, CONFIG_DEST, None))


def from_sources(cls: type[T], typed: Typed, base: Mapping[str, Any] | None = None) -> T:
    """Defaults, then ``base`` (e.g. a resumed run's values), then ``typed.config``, then typed."""
    values: dict[str, Any] = dict(base or {})
    if typed.config is not None:
        values.update(config_values(cls, read_yaml(typed.config), typed.config))
        build_source = typed.config
    else:
        build_source = None
    # Values from the file are checked with the file's name in the message; typed values were
    # converted by the parser already.
    for spec in specs(cls):
        if spec.name in values and spec.name not in typed.values and build_source is not None:
            values[spec.name] = convert(spec, values[spec.name], source=build_source)
    values.update(typed.values)
    return build(cls, values)


def differing(old: Any, new: Any, names: Iterable[str] | None = None) -> list[str]:
    """Names of the fields (among ``names``) whose values differ between two options objects."""
    fields_ = names if names is not None else [f.name for f in dataclasses.fields(old)]
    return [n for n in fields_ if getattr(old, n) != getattr(new, n)]
