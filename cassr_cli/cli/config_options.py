"""Upscale options generated from :class:`~cassr_cli.config.UpscaleConfig`'s fields: one list, not three.

Each config field becomes one Typer option (``--tile-size``; booleans ``--recursive/--no-recursive``;
the field's ``short`` alias, help text, choices, default and ``CASSR_*`` variable in the help, under the
field's panel). :func:`with_config_options` adds them to a command function, which receives the values
the user gave as one ``settings`` dict (``None`` = not given), ready for
:func:`~cassr_cli.config.resolve_config`. :func:`parse_config_flags` parses the same options from an
argument list (e.g. ``cassr eval --variant fast="--steps 5"``).
"""

from __future__ import annotations

import functools
import inspect
import shlex
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import typer

from cassr_cli.config import FIELDS, settings_to_args
from cassr_cli.errors import UsageError

__all__ = ["parse_config_flags", "settings_to_args", "with_config_options"]

PANEL_TITLES = {
    "model": "Model",
    "diffusion": "Diffusion (stage 2)",
    "engine": "Engine: tiles, precision, device",
    "output": "Inputs and outputs",
    "scale": "Scale-out: shards and clusters",
}
"""Help panel of each field's ``panel`` key."""

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "str | None": str, "bool": bool}

F = TypeVar("F", bound=Callable[..., Any])


def option_help(name: str) -> str:
    """Help text of a config key with its choices, default and environment variable, straight from the
    dataclass so help and behaviour cannot drift apart."""
    f = FIELDS[name]
    default = f.default
    if default is None:
        shown = "none"
    elif isinstance(default, bool):
        shown = str(default).lower()
    elif default == "":
        shown = "empty"
    else:
        shown = str(default)
    choices = f.metadata.get("choices")
    text = f.metadata["help"].rstrip(".")
    if choices:
        text += f": {' | '.join(choices)}"
    return f"{text}. (default {shown}; env CASSR_{name.upper()})"


def option_names(name: str) -> tuple[str, ...]:
    """Click declarations of a config key's option, e.g. ``("--recursive/--no-recursive", "-r")``."""
    f = FIELDS[name]
    long = "--" + name.replace("_", "-")
    if _python_type(name) is bool:
        long = f"{long}/--no-{long[2:]}"
    short = f.metadata.get("short")
    return (long, short) if short else (long,)


def _python_type(name: str) -> type:
    kind = str(FIELDS[name].type).replace("Optional[str]", "str | None")
    return _TYPES[kind]


def config_parameters(*, panels: bool = True) -> list[inspect.Parameter]:
    """One keyword-only parameter per config field, annotated for Typer; every default is ``None``
    ("not given", so environment, config file and defaults apply)."""
    params = []
    for name in FIELDS:
        option = typer.Option(
            *option_names(name),
            help=option_help(name),
            rich_help_panel=PANEL_TITLES[FIELDS[name].metadata["panel"]] if panels else None,
            show_default=False,
        )
        annotation = Annotated[_python_type(name) | None, option]  # type: ignore[valid-type]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


def with_config_options(func: F) -> F:
    """Give a command function every upscale option.

    ``func`` declares a ``settings`` parameter (``dict[str, Any]``) and none named like a config field;
    the Typer signature gets one option per field after ``func``'s own parameters, and ``func`` is
    called with ``settings={field: value or None}``.
    """
    own = inspect.signature(func, eval_str=True)
    if "settings" not in own.parameters:
        raise TypeError(f"{func.__name__} must take a 'settings' parameter")
    clash = set(own.parameters) & set(FIELDS)
    if clash:
        raise TypeError(f"{func.__name__} has parameters named like config fields: {sorted(clash)}")
    kept = [p for p in own.parameters.values() if p.name != "settings"]
    positional = [p for p in kept if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword = [p.replace(kind=p.KEYWORD_ONLY) for p in kept if p not in positional]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        settings = {name: kwargs.pop(name, None) for name in FIELDS}
        return func(*args, settings=settings, **kwargs)

    params = positional + config_parameters() + keyword
    command.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command  # type: ignore[return-value]


def parse_config_flags(args: Sequence[str] | str, *, what: str = "options") -> dict[str, Any]:
    """Parse upscale options (``["--steps", "5"]`` or ``"--steps 5 --color-fix none"``) into the
    ``{field: value}`` dict of the options given (the others are left out).

    Raises:
        UsageError: an unknown option, a missing or malformed value, or a positional argument.
    """
    from typer.main import get_command

    if isinstance(args, str):
        try:
            args = shlex.split(args)
        except ValueError as err:
            raise UsageError(f"cannot parse {what} {args!r}: {err}") from None

    def collect(settings: dict[str, Any]) -> dict[str, Any]:
        return settings

    probe = typer.Typer(add_completion=False)
    probe.command()(with_config_options(collect))
    command = get_command(probe)
    try:
        ctx = command.make_context("cassr", list(args), resilient_parsing=False)
        settings = command.invoke(ctx)
    except Exception as err:  # Click's usage errors, whatever their class in this Typer version
        format_message = getattr(err, "format_message", None)
        message = format_message() if callable(format_message) else str(err)
        raise UsageError(f"invalid {what} {' '.join(args)!r}: {message}") from None
    return {k: v for k, v in settings.items() if v is not None}
