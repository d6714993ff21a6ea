"""The weights manifest: which files make up each model, where they come from, and what they must hash to.

The manifest is a TOML file (``cassr_cli/weights/manifest.toml`` ships in the package and is the single
source of truth). It is loaded into frozen dataclasses and validated strictly, so a typo such as
``sha265`` or a revision that is not a 40-hex commit is a :class:`~cassr_cli.errors.ConfigError` naming the
file and the field, not a download that fetches the wrong bytes.

Which manifest is used: ``--manifest FILE`` > ``$CASSR_MANIFEST`` > the packaged one.

Schema (version 1)::

    schema = 1

    [[model]]
    name = "sd21-base"              # folder name inside the weights directory
    kind = "base"                   # base | activation | adapter
    default = true                  # part of a plain `cassr download-weights`
    description = "..."
    variant = "fp16"                # optional: diffusers weight variant of the files
    licence = { id = "...", name = "...", url = "...", note = "..." }
    hub = [                         # optional: Hugging Face sources, tried in order (mirrors)
      { repo = "org/name", revision = "<40 hex>" },
    ]

    [[model.files]]
    path = "unet/config.json"       # destination inside the model folder (POSIX, relative)
    size = 911                      # bytes
    sha256 = "<64 hex>"
    size_derived = false            # optional: the size was worked out, not read from a source
    url = "https://..."             # optional: direct URL (e.g. a GitHub release); else the hub sources
    source_path = "..."             # optional: path inside the hub repo when it differs from `path`
    note = "..."                    # optional: provenance of the values
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cassr_cli.errors import ConfigError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

MANIFEST_ENV = "CASSR_MANIFEST"
PACKAGED_MANIFEST = "manifest.toml"
SCHEMA_VERSION = 1
KINDS: tuple[str, ...] = ("base", "activation", "adapter")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REVISION_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_RESERVED_PREFIX = ".cassr"
_PART_SUFFIX = ".part"


@dataclass(frozen=True)
class HubSource:
    """One Hugging Face repository pinned at a commit; the resolve URL is built at download time so that
    ``HF_ENDPOINT`` can point it at a mirror."""

    repo: str
    revision: str


@dataclass(frozen=True)
class Licence:
    """The licence of a model: an SPDX-like id, a display name, where to read it, and a short note."""

    id: str
    name: str
    note: str
    url: str | None = None


@dataclass(frozen=True)
class WeightFile:
    """One file of a model.

    Attributes:
        path: destination inside the model folder (POSIX, relative, no ``..``).
        size: expected size in bytes.
        sha256: expected lowercase hex digest.
        size_derived: True when the size was worked out rather than read from a source; the download
            then trusts the sha256 and only warns when the real size differs.
        url: a direct URL (GitHub release); ``None`` means "from the model's hub sources".
        source_path: path inside the hub repository (defaults to ``path``).
        note: provenance of the pinned values.
    """

    path: str
    size: int
    sha256: str
    size_derived: bool = False
    url: str | None = None
    source_path: str | None = None
    note: str = ""

    @property
    def hub_path(self) -> str:
        """The path of this file inside a hub repository."""
        return self.source_path or self.path


@dataclass(frozen=True)
class ModelSpec:
    """One installable model: a folder ``WEIGHTS_DIR/<name>`` holding ``files``."""

    name: str
    kind: str
    default: bool
    description: str
    licence: Licence
    files: tuple[WeightFile, ...]
    hub: tuple[HubSource, ...] = ()
    variant: str | None = None

    @property
    def total_size(self) -> int:
        """The sum of the expected file sizes in bytes."""
        return sum(f.size for f in self.files)

    @property
    def has_derived_sizes(self) -> bool:
        """True if any file's size is marked derived."""
        return any(f.size_derived for f in self.files)

    def file(self, path: str) -> WeightFile | None:
        """The entry for destination ``path``, or ``None``."""
        for entry in self.files:
            if entry.path == path:
                return entry
        return None


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``origin`` names where it was read from (for messages)."""

    origin: str
    models: tuple[ModelSpec, ...]
    sha256: str

    @property
    def names(self) -> tuple[str, ...]:
        """Model names in manifest order."""
        return tuple(m.name for m in self.models)

    @property
    def defaults(self) -> tuple[ModelSpec, ...]:
        """The models a plain ``cassr download-weights`` installs."""
        return tuple(m for m in self.models if m.default)

    def get(self, name: str) -> ModelSpec | None:
        """The model called ``name``, or ``None``."""
        for model in self.models:
            if model.name == name:
                return model
        return None

    def select(self, names: list[str] | tuple[str, ...]) -> tuple[ModelSpec, ...]:
        """The models called ``names`` (the defaults when empty), in the order given, without repeats.

        Raises:
            UsageError: an unknown name; the message lists the valid names.
        """
        if not names:
            return self.defaults
        unknown = [n for n in names if self.get(n) is None]
        if unknown:
            raise UsageError(
                f"unknown model {', '.join(repr(n) for n in unknown)}; valid names: {', '.join(self.names)}",
                hint="see `cassr weights list`",
            )
        seen: dict[str, ModelSpec] = {}
        for n in names:
            seen.setdefault(n, self.get(n))  # type: ignore[arg-type]
        return tuple(seen.values())


# --- loading ------------------------------------------------------------------------------------------


def manifest_source(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Path | None:
    """The manifest file to read: ``explicit`` > ``$CASSR_MANIFEST`` > ``None`` (the packaged one)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(MANIFEST_ENV):
        return Path(env[MANIFEST_ENV]).expanduser()
    return None


def load_manifest(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Manifest:
    """Load and validate a manifest: ``path`` > ``$CASSR_MANIFEST`` > the packaged ``manifest.toml``.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or fails validation (the message names the
            file and the field).
    """
    source = manifest_source(path, env)
    if source is None:
        from importlib import resources

        text = resources.files("cassr_cli.weights").joinpath(PACKAGED_MANIFEST).read_text(encoding="utf-8")
        return parse_manifest(text, origin=f"packaged {PACKAGED_MANIFEST}")
    from_env = path is None
    where = f"{source} (from {MANIFEST_ENV})" if from_env else str(source)
    if not source.is_file():
        raise ConfigError(f"manifest not found: {where}")
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read manifest {where}: {err}") from None
    return parse_manifest(text, origin=str(source))


def parse_manifest(text: str, *, origin: str) -> Manifest:
    """Parse and validate manifest ``text``; ``origin`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"manifest {origin} is not valid TOML: {err}") from None
    ctx = _Ctx(origin)
    _check_keys(ctx, "top level", data, required={"schema", "model"}, optional=set())
    if data["schema"] != SCHEMA_VERSION:
        ctx.fail(
            "schema", f"unsupported schema {data['schema']!r} (this cassr reads schema {SCHEMA_VERSION})"
        )
    raw_models = data["model"]
    if not isinstance(raw_models, list) or not raw_models:
        ctx.fail("model", "expected at least one [[model]] table")
    models = tuple(_parse_model(ctx, i, raw) for i, raw in enumerate(raw_models))
    seen: set[str] = set()
    for model in models:
        if model.name in seen:
            ctx.fail(f"model {model.name!r}", "duplicate model name")
        seen.add(model.name)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Manifest(origin=origin, models=models, sha256=digest)


class _Ctx:
    """Builds error messages that name the manifest and the field."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, where: str, problem: str) -> Any:
        raise ConfigError(f"manifest {self.origin}: {where}: {problem}")


def _check_keys(ctx: _Ctx, where: str, table: Any, *, required: set[str], optional: set[str]) -> None:
    if not isinstance(table, dict):
        ctx.fail(where, "expected a table")
    unknown = sorted(set(table) - required - optional)
    if unknown:  # first: a typo ("sha265") is also a missing field, and this message points at the typo
        close = difflib.get_close_matches(unknown[0], sorted(required | optional), n=1)
        ctx.fail(
            where,
            f"unknown field(s) {', '.join(unknown)}" + (f" (did you mean {close[0]!r}?)" if close else ""),
        )
    missing = sorted(required - set(table))
    if missing:
        ctx.fail(where, f"missing field(s) {', '.join(missing)}")


def _str(ctx: _Ctx, where: str, table: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (not value and default is None):
        ctx.fail(f"{where}.{key}", f"expected a non-empty string, got {value!r}")
    return value  # type: ignore[return-value]


def _parse_model(ctx: _Ctx, index: int, raw: Any) -> ModelSpec:
    where = f"model #{index + 1}"
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        where = f"model {raw['name']!r}"
    _check_keys(
        ctx,
        where,
        raw,
        required={"name", "kind", "licence", "files"},
        optional={"default", "description", "hub", "variant"},
    )
    name = _str(ctx, where, raw, "name")
    if not _NAME_RE.match(name):
        ctx.fail(f"{where}.name", "use lowercase letters, digits, '.', '_' or '-' (it becomes a folder name)")
    kind = _str(ctx, where, raw, "kind")
    if kind not in KINDS:
        ctx.fail(f"{where}.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    default = raw.get("default", False)
    if not isinstance(default, bool):
        ctx.fail(f"{where}.default", f"expected true or false, got {default!r}")
    description = _str(ctx, where, raw, "description", default="")
    variant = raw.get("variant")
    if variant is not None and (not isinstance(variant, str) or not variant):
        ctx.fail(f"{where}.variant", f"expected a non-empty string, got {variant!r}")
    licence = _parse_licence(ctx, f"{where}.licence", raw["licence"])
    hub = _parse_hub(ctx, f"{where}.hub", raw.get("hub", []))
    raw_files = raw["files"]
    if not isinstance(raw_files, list) or not raw_files:
        ctx.fail(f"{where}.files", "expected at least one [[model.files]] table")
    files = tuple(_parse_file(ctx, where, i, f, has_hub=bool(hub)) for i, f in enumerate(raw_files))
    paths: set[str] = set()
    for entry in files:
        if entry.path in paths:
            ctx.fail(f"{where}.files", f"duplicate path {entry.path!r}")
        paths.add(entry.path)
    return ModelSpec(
        name=name,
        kind=kind,
        default=default,
        description=description,
        licence=licence,
        files=files,
        hub=hub,
        variant=variant,
    )


def _parse_licence(ctx: _Ctx, where: str, raw: Any) -> Licence:
    _check_keys(ctx, where, raw, required={"id", "name", "note"}, optional={"url"})
    url = raw.get("url")
    if url is not None:
        _check_url(ctx, f"{where}.url", url)
    return Licence(
        id=_str(ctx, where, raw, "id"),
        name=_str(ctx, where, raw, "name"),
        note=_str(ctx, where, raw, "note"),
        url=url,
    )


def _parse_hub(ctx: _Ctx, where: str, raw: Any) -> tuple[HubSource, ...]:
    if not isinstance(raw, list):
        ctx.fail(where, "expected a list of { repo, revision } tables")
    sources = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        _check_keys(ctx, here, item, required={"repo", "revision"}, optional=set())
        repo = _str(ctx, here, item, "repo")
        revision = _str(ctx, here, item, "revision")
        if not _REPO_RE.match(repo):
            ctx.fail(f"{here}.repo", f"expected 'owner/name', got {repo!r}")
        if not _REVISION_RE.match(revision):
            ctx.fail(f"{here}.revision", f"expected a 40-hex commit (never a branch), got {revision!r}")
        sources.append(HubSource(repo=repo, revision=revision))
    return tuple(sources)


def _parse_file(ctx: _Ctx, model_where: str, index: int, raw: Any, *, has_hub: bool) -> WeightFile:
    where = f"{model_where}.files[{index}]"
    if isinstance(raw, dict) and isinstance(raw.get("path"), str):
        where = f"{model_where} file {raw['path']!r}"
    _check_keys(
        ctx,
        where,
        raw,
        required={"path", "size", "sha256"},
        optional={"size_derived", "url", "source_path", "note"},
    )
    path = _str(ctx, where, raw, "path")
    _check_relative(ctx, f"{where}.path", path)
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        ctx.fail(f"{where}.size", f"expected a positive number of bytes, got {size!r}")
    sha = raw["sha256"]
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        ctx.fail(f"{where}.sha256", f"expected 64 lowercase hex digits, got {sha!r}")
    derived = raw.get("size_derived", False)
    if not isinstance(derived, bool):
        ctx.fail(f"{where}.size_derived", f"expected true or false, got {derived!r}")
    url = raw.get("url")
    if url is not None:
        _check_url(ctx, f"{where}.url", url)
    source_path = raw.get("source_path")
    if source_path is not None:
        _check_relative(ctx, f"{where}.source_path", source_path)
    if url is None and not has_hub:
        ctx.fail(where, "no source: give the file a url or the model a hub = [...] list")
    note = _str(ctx, where, raw, "note", default="")
    return WeightFile(
        path=path, size=size, sha256=sha, size_derived=derived, url=url, source_path=source_path, note=note
    )


def _check_relative(ctx: _Ctx, where: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        ctx.fail(where, f"expected a relative path, got {value!r}")
    pure = PurePosixPath(value)
    bad = (
        "\\" in value
        or pure.is_absolute()
        or ".." in pure.parts
        or "." in value.split("/")
        or value.endswith("/")
        or ":" in pure.parts[0]
        or pure.parts[0].startswith(_RESERVED_PREFIX)
        or value.endswith(_PART_SUFFIX)
    )
    if bad:
        ctx.fail(where, f"expected a plain relative POSIX path inside the model folder, got {value!r}")


def _check_url(ctx: _Ctx, where: str, value: Any) -> None:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        ctx.fail(where, f"expected an http(s) URL, got {value!r}")
