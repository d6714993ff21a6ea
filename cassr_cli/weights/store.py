"""Install stamps and integrity checks of installed models.

After every file of a model has been downloaded and its sha256 verified, the downloader writes
``<model>/.cassr-install.json``::

    {"schema": 1, "name": "sd21-base", "installed_at": "2026-11-26T12:00:00Z", "cassr_version": "0.1.0",
     "files": {"unet/config.json": {"size": 911, "sha256": "ce0c…"}, …}}

Two levels of checking use it:

* :func:`require_installed` — cheap, at load time: the stamp exists and every stamped file exists with
  the stamped size. Catches missing and truncated files without reading gigabytes.
* :func:`verify_model` — full re-hash, for ``cassr weights verify``. Catches altered bytes of the same size.

Torch-free and Rich-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cassr_cli._version import __version__
from cassr_cli.errors import WeightsCorruptError, WeightsMissingError
from cassr_cli.weights.manifest import ModelSpec, WeightFile
from cassr_cli.weights.paths import STAMP_NAME, model_dir, resolve_weights_dir

logger = logging.getLogger(__name__)

STAMP_SCHEMA = 1
PART_SUFFIX = ".part"
HASH_CHUNK = 4 * 2**20

HashProgress = Callable[[str, int, int], None]
"""Called as ``progress(file, bytes_done, bytes_total)`` while a file is hashed."""


@dataclass(frozen=True)
class StampedFile:
    """One file recorded in an install stamp."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Stamp:
    """The parsed content of ``.cassr-install.json``."""

    name: str
    installed_at: str
    files: tuple[StampedFile, ...]
    cassr_version: str = ""

    def entry(self, path: str) -> StampedFile | None:
        """The stamped file ``path``, or ``None``."""
        for item in self.files:
            if item.path == path:
                return item
        return None


@dataclass(frozen=True)
class FileProblem:
    """A file that failed a check: ``kind`` is ``missing``, ``size`` or ``sha256``."""

    path: str
    kind: str
    expected: str
    actual: str

    def describe(self) -> str:
        """One human line, e.g. ``unet/x.safetensors: sha256 expected 28ec…, got 00ab…``."""
        if self.kind == "missing":
            return f"{self.path}: missing"
        return f"{self.path}: {self.kind} expected {self.expected}, got {self.actual}"


def stamp_path(folder: Path) -> Path:
    """Where the install stamp of the model in ``folder`` lives."""
    return folder / STAMP_NAME


def sha256_file(path: Path, *, progress: HashProgress | None = None, label: str | None = None) -> str:
    """The hex sha256 of ``path``, read in chunks; ``progress`` is told the bytes hashed so far."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label or path.name, done, total)
    return digest.hexdigest()


def write_stamp(model_dir: Path, name: str, files: Mapping[str, tuple[int, str]]) -> None:
    """Write ``<model_dir>/.cassr-install.json`` atomically.

    Args:
        model_dir: the model's folder (must exist).
        name: the model name.
        files: destination path (relative, POSIX) → ``(size, sha256)`` of every verified file.
    """
    record = {
        "schema": STAMP_SCHEMA,
        "name": name,
        "installed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cassr_version": __version__,
        "files": {path: {"size": int(size), "sha256": sha} for path, (size, sha) in sorted(files.items())},
    }
    target = stamp_path(model_dir)
    fd, tmp = tempfile.mkstemp(prefix=".cassr-install.", suffix=".tmp", dir=model_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("wrote install stamp %s", target)


def remove_stamp(model_dir: Path) -> None:
    """Delete the stamp (the model no longer counts as installed until a new one is written)."""
    stamp_path(model_dir).unlink(missing_ok=True)


def read_stamp(model_dir: Path) -> Stamp | None:
    """The stamp of the model in ``model_dir``; ``None`` if there is none.

    Raises:
        WeightsCorruptError: the stamp exists but cannot be parsed.
    """
    path = stamp_path(model_dir)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise WeightsCorruptError(f"cannot read install stamp {path}: {err}") from None
    try:
        data: Any = json.loads(raw)
        files = tuple(
            StampedFile(path=str(p), size=int(v["size"]), sha256=str(v["sha256"]))
            for p, v in data["files"].items()
        )
        return Stamp(
            name=str(data["name"]),
            installed_at=str(data.get("installed_at", "")),
            files=files,
            cassr_version=str(data.get("cassr_version", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsCorruptError(
            f"install stamp {path} is damaged ({type(err).__name__}: {err})",
            hint=f"run: {download_command(model_dir.name, model_dir.parent, force=True)}",
        ) from None


def download_command(names: str | Sequence[str], weights_dir: Path, *, force: bool = False) -> str:
    """The exact command that (re)installs ``names`` into ``weights_dir``.

    ``--weights-dir`` is included only when ``weights_dir`` is not where a plain command would look
    (``$CASSR_WEIGHTS_DIR`` or the user cache directory).
    """
    parts = ["cassr", "download-weights"]
    if force:
        parts.append("--force")
    try:
        plain = resolve_weights_dir(None).expanduser().resolve() == weights_dir.expanduser().resolve()
    except OSError:
        plain = False
    if not plain:
        parts += ["--weights-dir", str(weights_dir)]
    parts += [names] if isinstance(names, str) else list(names)
    return shlex.join(parts)


def cheap_problems(folder: Path, stamp: Stamp) -> list[FileProblem]:
    """Stamped files that are missing or have another size than stamped (no hashing)."""
    problems = []
    for item in stamp.files:
        path = folder / item.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(FileProblem(item.path, "missing", str(item.size), "absent"))
            continue
        if size != item.size:
            problems.append(FileProblem(item.path, "size", f"{item.size} bytes", f"{size} bytes"))
    return problems


def require_installed(weights_dir: Path, name: str) -> Path:
    """The folder of model ``name``, after a cheap integrity check (stamp + file sizes).

    Use this at load time, before touching a GPU. A model given by path rather than by name is the
    caller's business.

    Raises:
        WeightsMissingError: not installed (no stamp) or a stamped file is gone; the hint is the exact
            command to run.
        WeightsCorruptError: a stamped file has the wrong size (truncated or replaced) or the stamp is
            damaged; the hint is the exact ``--force`` command.
    """
    folder = model_dir(weights_dir, name)
    stamp = read_stamp(folder) if folder.is_dir() else None
    if stamp is None:
        state = "is incomplete (no install stamp)" if folder.is_dir() else "is not installed"
        raise WeightsMissingError(
            f"weights {name!r} {state} in {weights_dir}",
            hint=f"run: {download_command(name, weights_dir)}",
        )
    problems = cheap_problems(folder, stamp)
    missing = [p for p in problems if p.kind == "missing"]
    if missing:
        raise WeightsMissingError(
            f"weights {name!r} in {weights_dir}: {len(missing)} file(s) missing: "
            + ", ".join(p.path for p in missing),
            hint=f"run: {download_command(name, weights_dir)}",
        )
    if problems:
        raise WeightsCorruptError(
            f"weights {name!r} in {weights_dir} fail the integrity check: "
            + "; ".join(p.describe() for p in problems),
            hint=f"run: {download_command(name, weights_dir, force=True)}",
        )
    return folder


def require_all_installed(weights_dir: Path, names: Sequence[str]) -> None:
    """:func:`require_installed` for several models at once, so one error names every model that needs
    (re)installing and the hint is one command for all of them.

    Raises:
        WeightsMissingError: some models are missing (corrupt ones, if any, are named too).
        WeightsCorruptError: some models fail the integrity check and none is missing.
    """
    missing: list[tuple[str, WeightsMissingError]] = []
    corrupt: list[tuple[str, WeightsCorruptError]] = []
    for name in dict.fromkeys(names):
        try:
            require_installed(weights_dir, name)
        except WeightsMissingError as err:
            missing.append((name, err))
        except WeightsCorruptError as err:
            corrupt.append((name, err))
    if not missing and not corrupt:
        return
    message = "; ".join(err.message for _, err in [*missing, *corrupt])
    hints = []
    if missing:
        hints.append(download_command([n for n, _ in missing], weights_dir))
    if corrupt:
        hints.append(download_command([n for n, _ in corrupt], weights_dir, force=True))
    hint = "run: " + " && ".join(hints)
    if missing:
        raise WeightsMissingError(message, hint=hint)
    raise WeightsCorruptError(message, hint=hint)


def verify_model(
    weights_dir: Path, name: str, *, progress: HashProgress | None = None
) -> tuple[Stamp, list[FileProblem]]:
    """Re-hash every stamped file of ``name`` and compare with the stamp (the full, slow check).

    Returns:
        The stamp and the files that are missing, of the wrong size, or hash differently (empty: all good).

    Raises:
        WeightsMissingError: the model has no stamp.
        WeightsCorruptError: the stamp is damaged.
    """
    folder = model_dir(weights_dir, name)
    stamp = read_stamp(folder) if folder.is_dir() else None
    if stamp is None:
        raise WeightsMissingError(
            f"weights {name!r} are not installed in {weights_dir}",
            hint=f"run: {download_command(name, weights_dir)}",
        )
    problems = cheap_problems(folder, stamp)
    bad = {p.path for p in problems}
    for item in stamp.files:
        if item.path in bad:
            continue
        actual = sha256_file(folder / item.path, progress=progress, label=f"{name}/{item.path}")
        if actual != item.sha256:
            problems.append(FileProblem(item.path, "sha256", item.sha256, actual))
    order = {item.path: i for i, item in enumerate(stamp.files)}
    problems.sort(key=lambda p: order.get(p.path, 0))
    return stamp, problems


@dataclass(frozen=True)
class FilePlan:
    """What to do with one file: ``present`` (nothing), ``download``, ``resume`` (a ``.part`` with
    ``have`` bytes exists) or ``check`` (an unstamped file of the right size, hashed before deciding)."""

    entry: WeightFile
    dest: Path
    action: str
    have: int = 0


@dataclass(frozen=True)
class ModelPlan:
    """The plan for one model; ``installed`` is True when nothing has to be done."""

    model: ModelSpec
    folder: Path
    files: tuple[FilePlan, ...]

    @property
    def installed(self) -> bool:
        """Every file is present and the stamp covers them."""
        return all(f.action == "present" for f in self.files)

    @property
    def bytes_to_fetch(self) -> int:
        """An upper bound on the bytes to transfer."""
        return sum(f.entry.size - f.have for f in self.files if f.action in ("download", "resume", "check"))


# --- planning: the manifest against what is installed -------------------------------------------------


def part_path(dest: Path) -> Path:
    """The partial-download file next to ``dest``."""
    return dest.with_name(dest.name + PART_SUFFIX)


def plan_model(weights_dir: Path, model: ModelSpec, *, force: bool = False) -> ModelPlan:
    """Decide per file what ``download.install_model`` will do, without hashing or network access."""
    folder = model_dir(weights_dir, model.name)
    stamp = read_stamp(folder) if folder.is_dir() and not force else None
    plans = []
    for entry in model.files:
        dest = folder / entry.path
        part = part_path(dest)
        if force:
            plans.append(FilePlan(entry, dest, "download"))
            continue
        stamped = stamp.entry(entry.path) if stamp else None
        size = dest.stat().st_size if dest.is_file() else None
        if stamped and stamped.sha256 == entry.sha256 and size == stamped.size:
            plans.append(FilePlan(entry, dest, "present"))
        elif size is not None and (size == entry.size or entry.size_derived):
            plans.append(FilePlan(entry, dest, "check"))
        elif part.is_file() and part.stat().st_size > 0:
            plans.append(FilePlan(entry, dest, "resume", have=part.stat().st_size))
        else:
            plans.append(FilePlan(entry, dest, "download"))
    return ModelPlan(model=model, folder=folder, files=tuple(plans))


@dataclass(frozen=True)
class ModelStatus:
    """How a manifest model stands in a weights directory (for ``cassr weights list`` and ``doctor``).

    ``status`` is ``installed``, ``partial`` (some files or a ``.part`` present, or installed from another
    manifest), ``corrupt`` (a stamped file has the wrong size or is gone) or ``missing``.
    """

    name: str
    status: str
    detail: str
    folder: Path


def model_status(weights_dir: Path, model: ModelSpec) -> ModelStatus:
    """The cheap (no hashing) status of ``model`` in ``weights_dir``."""
    folder = model_dir(weights_dir, model.name)
    if not folder.is_dir():
        return ModelStatus(model.name, "missing", "", folder)
    try:
        stamp = read_stamp(folder)
    except WeightsCorruptError:
        return ModelStatus(model.name, "corrupt", "damaged install stamp", folder)
    if stamp is not None:
        problems = cheap_problems(folder, stamp)
        if problems:
            return ModelStatus(model.name, "corrupt", "; ".join(p.describe() for p in problems), folder)
    plan = plan_model(weights_dir, model)
    if plan.installed:
        return ModelStatus(model.name, "installed", "", folder)
    done = sum(1 for f in plan.files if f.action == "present")
    started = [f for f in plan.files if f.action in ("check", "resume")]
    if stamp is not None:
        return ModelStatus(model.name, "partial", "installed from another manifest; download again", folder)
    if done or started:
        detail = f"{done + len(started)} of {len(plan.files)} files present or started"
        return ModelStatus(model.name, "partial", detail, folder)
    return ModelStatus(model.name, "missing", "", folder)
