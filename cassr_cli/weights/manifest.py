"""The weights manifest: the files of each model, where they come from and what they must hash to.

``manifest.toml`` next to this file ships in the package and describes the schema in its header. It is
validated strictly: a typo such as ``sha265`` or a branch instead of a 40-hex revision is a
:class:`~cassr_cli.errors.ConfigError` naming the file and the field. Which manifest is read:
``--manifest FILE`` > ``$CASSR_MANIFEST`` > the packaged one.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from cassr_cli.errors import ConfigError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MANIFEST_ENV = "CASSR_MANIFEST"
KINDS = ("base", "activation", "adapter")


class HubSource(NamedTuple):
    """A Hugging Face repository at a 40-hex commit; the endpoint is chosen at download time."""

    repo: str
    revision: str


class Licence(NamedTuple):
    id: str
    name: str
    note: str
    url: str | None = None


class WeightFile(NamedTuple):
    """``path`` in the model folder (and in the hub repository), its ``size`` in bytes and lowercase hex
    ``sha256``; ``size_derived``: worked out rather than read (the sha256 decides); ``url``: a direct
    source instead of the model's hub; ``note``: provenance."""

    path: str
    size: int
    sha256: str
    size_derived: bool = False
    url: str | None = None
    note: str = ""


class ModelSpec(NamedTuple):
    """One installable model: the folder ``WEIGHTS_DIR/<name>`` holding ``files``."""

    name: str
    kind: str
    licence: Licence
    files: tuple[WeightFile, ...]
    hub: tuple[HubSource, ...] = ()
    default: bool = False
    description: str = ""
    variant: str | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


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

    def select(self, names: list[str] | tuple[str, ...]) -> tuple[ModelSpec, ...]:
        """``names`` in order without repeats (the defaults when empty); UsageError lists valid names."""
        if unknown := [n for n in names if self.get(n) is None]:
            listed = ", ".join(repr(n) for n in unknown)
            hint = "see `cassr weights list`"
            raise UsageError(f"unknown model {listed}; valid names: {', '.join(self.names)}", hint=hint)
        return tuple(self.get(n) for n in dict.fromkeys(names)) if names else self.defaults  # type: ignore[misc]


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

    def checked(where: str, raw: Any, table: str) -> dict[str, Any]:
        spec = _SCHEMA[table]
        if not isinstance(raw, dict):
            fail(where, "expected a table")
        if unknown := sorted(set(raw) - set(spec)):  # before "missing": a typo is both; point at the typo
            close = difflib.get_close_matches(unknown[0], sorted(spec), n=1)
            fail(where, f"unknown field(s) {', '.join(unknown)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if missing := sorted(k for k, (required, _, _) in spec.items() if required and k not in raw):
            fail(where, f"missing field(s) {', '.join(missing)}")
        for key, value in raw.items():
            if not spec[key][1](value):
                fail(f"{where}.{key}", f"expected {spec[key][2]}, got {value!r}")
        return raw

    def model(index: int, raw: Any) -> ModelSpec:
        where = f"model {raw['name']!r}" if isinstance(raw, dict) and "name" in raw else f"model #{index + 1}"
        fields = checked(where, raw, "model")
        hub = tuple(HubSource(**checked(f"{where}.hub[{i}]", h, "hub")) for i, h in enumerate(raw.get("hub", [])))
        files = []
        for i, f in enumerate(raw["files"]):
            here = f"{where} file {f['path']!r}" if isinstance(f, dict) and "path" in f else f"{where}.files[{i}]"
            files.append(WeightFile(**checked(here, f, "file")))
            if files[-1].url is None and not hub:
                fail(here, "no source: give the file a url or the model a hub = [...] list")
        if dupes := _repeated(f.path for f in files):
            fail(f"{where}.files", f"duplicate path {dupes[0]!r}")
        licence = Licence(**checked(f"{where}.licence", raw["licence"], "licence"))
        return ModelSpec(**{**fields, "licence": licence, "files": tuple(files), "hub": hub})

    checked("top level", data, "top")
    if data["schema"] != 1:
        fail("schema", f"unsupported schema {data['schema']!r} (this cassr reads schema 1)")
    models = tuple(model(i, raw) for i, raw in enumerate(data["model"]))
    if dupes := _repeated(m.name for m in models):
        fail(f"model {dupes[0]!r}", "duplicate model name")
    return Manifest(origin, models)


def _repeated(values: Any) -> list[str]:
    return sorted(value for value, count in Counter(values).items() if count > 1)


def _relative(value: Any) -> bool:
    """A plain relative POSIX path that stays inside the model folder and avoids cassr's own names."""
    if not isinstance(value, str) or not value:
        return False
    parts = PurePosixPath(value).parts
    odd = "\\" in value or value.startswith("/") or ".." in parts or "." in value.split("/") or ":" in parts[0]
    return not (odd or value.endswith(("/", ".part")) or parts[0].startswith(".cassr"))


def _text(pattern: str = r".") -> Any:
    return lambda v: isinstance(v, str) and re.fullmatch(pattern, v, re.S) is not None


def _of(kind: type) -> Any:
    return lambda v: isinstance(v, kind)


_TEXT = (True, _text(r".+"), "a non-empty string")
_NOTE = (False, _of(str), "a string")
_FLAG = (False, _of(bool), "true or false")
_URL = (False, _text(r"https?://[^/\s]+(/\S*)?"), "an http(s) URL")
_SCHEMA: dict[str, dict[str, tuple[bool, Any, str]]] = {  # field: (required, test, what is expected)
    "top": {
        "schema": (True, _of(object), ""),
        "model": (True, lambda v: _of(list)(v) and v, "[[model]] tables"),
    },
    "model": {
        "name": (True, _text(r"[a-z0-9][a-z0-9._-]{0,63}"), "lowercase letters, digits, '.', '_' or '-'"),
        "kind": (True, lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
        "licence": (True, _of(dict), "a table"),
        "files": (True, lambda v: _of(list)(v) and v, "at least one [[model.files]] table"),
        "hub": (False, _of(list), "a list of { repo, revision } tables"),
        "default": _FLAG,
        "description": _NOTE,
        "variant": (False, *_TEXT[1:]),
    },
    "licence": {"id": _TEXT, "name": _TEXT, "note": _TEXT, "url": _URL},
    "hub": {
        "repo": (True, _text(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"), "'owner/name'"),
        "revision": (True, _text(r"[0-9a-f]{40}"), "a 40-hex commit (never a branch)"),
    },
    "file": {
        "path": (True, _relative, "a plain relative POSIX path inside the model folder"),
        "size": (True, lambda v: type(v) is int and v > 0, "a positive number of bytes"),
        "sha256": (True, _text(r"[0-9a-f]{64}"), "64 lowercase hex digits"),
        "size_derived": _FLAG,
        "url": _URL,
        "note": _NOTE,
    },
}
