"""Typed TOML ⇄ frozen-dataclass conversion for the training config, and ``--set key=value`` overrides.

A schema is a frozen dataclass whose fields are ``bool``, ``int``, ``float``, ``str``, a ``Literal`` of
strings, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y, …]`` or another such dataclass (a TOML table).
Values are checked against the field's type — never evaluated — and unknown keys are errors that name
the dotted key and suggest the closest valid one. Overrides use dotted keys into nested tables
(``optim.learning_rate=2e-4``); the value is parsed as a TOML value (``[1, 2]``, ``true``, ``"text"``),
except that a ``str`` field takes the text as it is unless it is quoted.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union

from cassr_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

_HINTS: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a dataclass (cached)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _HINTS[cls]


def _unknown_key(key: str, valid: Iterable[str], origin: str) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    prefix = key[: -len(name)]
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"did you mean {prefix + close[0]!r}?" if close else f"valid keys here: {', '.join(valid)}"
    return ConfigError(f"unknown key {key!r} in {origin}", hint=hint)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return getattr(hint, "__name__", str(hint))


def coerce(hint: Any, value: Any, key: str, origin: str, *, exclude: Mapping[type, frozenset[str]] = {}) -> Any:  # noqa: B006
    """``value`` (as TOML gives it) converted to the type ``hint``, or :class:`ConfigError` naming ``key``."""

    def bad() -> ConfigError:
        return ConfigError(f"{key} in {origin} must be {_type_name(hint)}, got {value!r}")

    kind = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise bad()
        return from_mapping(hint, value, origin=origin, prefix=key + ".", exclude=exclude)  # type: ignore[arg-type]
    if kind in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, key, origin, exclude=exclude)
            except ConfigError:
                continue
        raise bad()
    if kind is Literal:
        if value not in typing.get_args(hint) or isinstance(value, bool):
            raise bad()
        return value
    if kind is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, f"{key}[{i}]", origin, exclude=exclude) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad()
        return tuple(coerce(a, v, f"{key}[{i}]", origin, exclude=exclude) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise TypeError(f"unsupported schema type {hint!r} for {key}")  # pragma: no cover - schema bug


def from_mapping(
    cls: type, data: Mapping[str, Any], *, origin: str, prefix: str = "", exclude: Mapping[type, frozenset[str]] = {}  # noqa: B006
) -> Any:
    """Build the dataclass ``cls`` from a (nested) mapping; missing keys keep their defaults.

    Args:
        exclude: per dataclass, field names that may not be given (they are set by the caller).

    Raises:
        ConfigError: unknown or excluded key, wrong type, or a value the dataclass rejects.
    """
    hints = field_types(cls)
    excluded = exclude.get(cls, frozenset())
    kwargs = {}
    for key, value in data.items():
        if key not in hints or key in excluded:
            raise _unknown_key(prefix + key, [k for k in hints if k not in excluded], origin)
        kwargs[key] = coerce(hints[key], value, prefix + key, origin, exclude=exclude)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        where = f" (section {prefix.rstrip('.')!r})" if prefix else ""
        raise ConfigError(f"{err}{where} in {origin}", hint=err.hint) from None


def load_toml(path: Any) -> dict[str, Any]:
    """Read a TOML file into a dict; :class:`ConfigError` when unreadable or invalid."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def _hint_at(cls: type, dotted: str, exclude: Mapping[type, frozenset[str]]) -> Any:
    """The type of the field at ``dotted`` (``a.b.c``) in the schema ``cls``."""
    hint: Any = cls
    walked: list[str] = []
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"--set {dotted}: {'.'.join(walked)} is not a table")
        hints = field_types(hint)
        excluded = exclude.get(hint, frozenset())
        if part not in hints or part in excluded:
            raise _unknown_key(".".join([*walked, part]), [k for k in hints if k not in excluded], "--set")
        walked.append(part)
        hint = hints[part]
    return hint


def _is_str_field(hint: Any) -> bool:
    """A ``str`` or string-``Literal`` field (optionally ``| None``): takes unquoted text."""
    if hint is str:
        return True
    kind = typing.get_origin(hint)
    if kind is Literal:
        return all(isinstance(a, str) for a in typing.get_args(hint))
    if kind in (Union, types.UnionType):
        return any(_is_str_field(a) for a in typing.get_args(hint) if a is not type(None))
    return False


def parse_override(cls: type, text: str, *, exclude: Mapping[type, frozenset[str]] = {}) -> tuple[list[str], Any]:  # noqa: B006
    """``"a.b=value"`` → (``["a", "b"]``, the raw TOML value). The key must exist in the schema ``cls``;
    the value's type is checked later, with the whole config."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}", hint="e.g. --set optim.learning_rate=2e-4")
    hint = _hint_at(cls, key, exclude)
    raw = raw.strip()
    if _is_str_field(hint) and not raw.startswith(('"', "'")):
        return key.split("."), raw
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(
            f"--set {key}: cannot read {raw!r} as {_type_name(hint)}",
            hint='values are TOML: 3, 2e-4, true, [0.9, 0.999], "text"',
        ) from None
    return key.split("."), value


def apply_overrides(
    cls: type, data: Mapping[str, Any], overrides: Iterable[str], *, exclude: Mapping[type, frozenset[str]] = {}  # noqa: B006
) -> dict[str, Any]:
    """A deep copy of ``data`` with each ``key=value`` override set (keys checked against ``cls``)."""
    out: dict[str, Any] = json.loads(json.dumps(data))  # deep copy of plain TOML data
    for text in overrides:
        path, value = parse_override(cls, text, exclude=exclude)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return out


# --- writing ------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover - schema bug


def to_toml(obj: Any, *, exclude: Mapping[type, frozenset[str]] = {}, header: str = "") -> str:  # noqa: B006
    """A dataclass instance as a TOML document (``None`` values are left out); round-trips through
    :func:`from_mapping`."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += _table_lines(obj, "", exclude)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table_lines(obj: Any, name: str, exclude: Mapping[type, frozenset[str]]) -> list[str]:
    excluded = exclude.get(type(obj), frozenset())
    scalars, tables = [], []
    for f in dataclasses.fields(obj):
        if f.name in excluded:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif value is not None:
            scalars.append(f"{f.name} = {_toml_value(value)}")
    lines = []
    if name and (scalars or not tables):
        lines += ["", f"[{name}]"]
    lines += scalars
    for key, value in tables:
        lines += _table_lines(value, f"{name}.{key}" if name else key, exclude)
    return lines
