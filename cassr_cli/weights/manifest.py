"""The weights manifest: the files of each model, where they come from and what they must hash to.

``manifest.toml`` next to this file ships in the package and describes the schema in its header; the
dataclasses below are that schema, each field with the test its TOML value must pass. A typo such as
``sha265`` or a branch instead of a 40-hex revision is a :class:`~cassr_cli.errors.ConfigError` naming the
file and the field. Which manifest is read: ``--manifest FILE`` > ``$CASSR_MANIFEST`` > the packaged one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from cassr_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MANIFEST_ENV = "CASSR_MANIFEST"
KINDS = ("base", "activation", "adapter")


def _rule(test: Callable[[Any], Any], expects: str, default: Any = MISSING) -> Any:
    """A manifest field: required unless it has a ``default``; its TOML value must pass ``test``."""
    return dataclasses.field(default=default, metadata={"test": test, "expects": expects})


def _text(pattern: str = r".+") -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and re.fullmatch(pattern, v, re.S) is not None


def _relative(value: Any) -> bool:
    """A plain relative POSIX path that stays inside the model folder and avoids cassr's own names."""
    parts = PurePosixPath(value).parts if isinstance(value, str) else ()
    if not parts or "\\" in value or value.startswith("/") or ".." in parts or "." in value.split("/"):
        return False
    return not (":" in parts[0] or value.endswith(("/", ".part")) or parts[0].startswith(".cassr"))


_URL = (_text(r"https?://[^/\s]+(/\S*)?"), "an http(s) URL", None)
_NOTE = (lambda v: isinstance(v, str), "a string", "")
_FLAG = (lambda v: isinstance(v, bool), "true or false", False)


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face repository at a 40-hex commit; the endpoint is chosen at download time."""

    repo: str = _rule(_text(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"), "'owner/name'")
    revision: str = _rule(_text(r"[0-9a-f]{40}"), "a 40-hex commit (never a branch)")


@dataclass(frozen=True)
class Licence:
    id: str = _rule(_text(), "a non-empty string")
    name: str = _rule(_text(), "a non-empty string")
    note: str = _rule(_text(), "a non-empty string")
    url: str | None = _rule(*_URL)


@dataclass(frozen=True)
class WeightFile:
    """``path`` in the model folder (and in the hub repository), its ``size`` in bytes and lowercase hex
    ``sha256``; ``size_derived``: worked out rather than read (the sha256 decides); ``url``: a direct
    source instead of the model's hub; ``note``: provenance."""

    path: str = _rule(_relative, "a plain relative POSIX path inside the model folder")
    size: int = _rule(lambda v: type(v) is int and v > 0, "a positive number of bytes")
    sha256: str = _rule(_text(r"[0-9a-f]{64}"), "64 lowercase hex digits")
    size_derived: bool = _rule(*_FLAG)
    url: str | None = _rule(*_URL)
    note: str = _rule(*_NOTE)


@dataclass(frozen=True)
class ModelSpec:
    """One installable model: the folder ``WEIGHTS_DIR/<name>`` holding ``files``."""

    name: str = _rule(_text(r"[a-z0-9][a-z0-9._-]{0,63}"), "lowercase letters, digits, '.', '_' or '-'")
    kind: str = _rule(lambda v: v in KINDS, f"one of {', '.join(KINDS)}")
    licence: Licence = _rule(lambda v: isinstance(v, dict), "a table")
    files: tuple[WeightFile, ...] = _rule(lambda v: isinstance(v, list) and v, "[[model.files]] tables")
    hub: tuple[HubSource, ...] = _rule(lambda v: isinstance(v, list), "a list of { repo, revision }", ())
    default: bool = _rule(*_FLAG)
    description: str = _rule(*_NOTE)
    variant: str | None = _rule(_text(), "a non-empty string", None)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class _Document:
    schema: int = _rule(lambda v: True, "")
    model: tuple[ModelSpec, ...] = _rule(lambda v: isinstance(v, list) and v, "[[model]] tables")


class Manifest(NamedTuple):
    origin: str  # where it was read from, for messages
    models: tuple[ModelSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def defaults(self) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.default)

    def get(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Load and validate ``path`` > ``$CASSR_MANIFEST`` > the packaged ``manifest.toml`` (ConfigError)."""
    chosen = path or os.environ.get(MANIFEST_ENV)
    if not chosen:
        from importlib import resources

        text = resources.files("cassr_cli.weights").joinpath("manifest.toml").read_text(encoding="utf-8")
        return parse_manifest(text, origin="packaged manifest.toml")
    source = Path(chosen).expanduser()
    where = str(source) if path else f"{source} (from {MANIFEST_ENV})"
    if not source.is_file():
        raise ConfigError(f"manifest not found: {where}")
    try:
        return parse_manifest(source.read_text(encoding="utf-8"), origin=str(source))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read manifest {where}: {err}") from None


def parse_manifest(text: str, *, origin: str) -> Manifest:
    """Parse and validate manifest ``text``; ``origin`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"manifest {origin} is not valid TOML: {err}") from None

    def fail(where: str, problem: str) -> Any:
        raise ConfigError(f"manifest {origin}: {where}: {problem}")

    def checked(cls: Any, where: str, raw: Any) -> dict[str, Any]:
        """``raw`` if it is a table with the fields of the dataclass ``cls``, each passing its test."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict):
            fail(where, "expected a table")
        if unknown := sorted(set(raw) - set(fields)):  # before "missing": a typo is both; point at the typo
            close = difflib.get_close_matches(unknown[0], sorted(fields), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            fail(where, f"unknown field(s) {', '.join(unknown)}{guess}")
        if missing := sorted(k for k, f in fields.items() if f.default is MISSING and k not in raw):
            fail(where, f"missing field(s) {', '.join(missing)}")
        for key, value in raw.items():
            if not fields[key].metadata["test"](value):
                fail(f"{where}.{key}", f"expected {fields[key].metadata['expects']}, got {value!r}")
        return raw

    def model(index: int, raw: Any) -> ModelSpec:
        where = f"model {raw['name']!r}" if isinstance(raw, dict) and "name" in raw else f"model #{index + 1}"
        checked(ModelSpec, where, raw)
        sources = enumerate(raw.get("hub", []))
        hub = tuple(HubSource(**checked(HubSource, f"{where}.hub[{i}]", h)) for i, h in sources)
        files = []
        for i, f in enumerate(raw["files"]):
            named = isinstance(f, dict) and "path" in f
            here = f"{where} file {f['path']!r}" if named else f"{where}.files[{i}]"
            files.append(WeightFile(**checked(WeightFile, here, f)))
            if files[-1].url is None and not hub:
                fail(here, "no source: give the file a url or the model a hub = [...] list")
        if dupes := _repeated(f.path for f in files):
            fail(f"{where}.files", f"duplicate path {dupes[0]!r}")
        licence = Licence(**checked(Licence, f"{where}.licence", raw["licence"]))
        return ModelSpec(**{**raw, "licence": licence, "files": tuple(files), "hub": hub})

    checked(_Document, "top level", data)
    if data["schema"] != 1:
        fail("schema", f"unsupported schema {data['schema']!r} (this cassr reads schema 1)")
    models = tuple(model(i, raw) for i, raw in enumerate(data["model"]))
    if dupes := _repeated(m.name for m in models):
        fail(f"model {dupes[0]!r}", "duplicate model name")
    return Manifest(origin, models)


def _repeated(values: Iterable[str]) -> list[str]:
    return sorted(value for value, count in Counter(values).items() if count > 1)
