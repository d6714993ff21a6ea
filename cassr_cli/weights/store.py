"""Installed models: one folder per model in the weights directory, its install stamp
(``<model>/.cassr-install.json``: each file's size and sha256, written once all are verified), the cheap
load-time check (:func:`require_installed`: stamp and sizes), the full re-hash (:func:`check_model`) and the
per-file plan of an install. Torch-free and Rich-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from cassr_cli._version import __version__
from cassr_cli.errors import WeightsCorruptError, WeightsMissingError
from cassr_cli.io.atomic import write_atomic
from cassr_cli.weights.manifest import ModelSpec, WeightFile

WEIGHTS_DIR_ENV = "CASSR_WEIGHTS_DIR"
STAMP_NAME = ".cassr-install.json"
Progress = Callable[[str, int, int], None]  # progress(label, bytes_done, bytes_total)
Stamp = dict[str, tuple[int, str]]  # the files an install stamp records: relative path → (size, sha256)


class FileProblem(NamedTuple):
    """A file that failed a check: ``kind`` is ``missing``, ``size`` or ``sha256``."""

    path: str
    kind: str
    expected: str
    actual: str

    def describe(self) -> str:
        if self.kind == "missing":
            return f"{self.path}: missing"
        return f"{self.path}: {self.kind} expected {self.expected}, got {self.actual}"


def resolve_weights_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """``explicit`` if given, else ``$CASSR_WEIGHTS_DIR``, else the per-user cache location."""
    import platformdirs

    value = explicit or os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else platformdirs.user_cache_path("cassr") / "weights"


def sha256_file(path: Path, progress: Progress | None = None, label: str = "") -> str:
    """The hex sha256 of ``path``, read in 4 MiB chunks."""
    digest, done, total = hashlib.sha256(), 0, path.stat().st_size
    with path.open("rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label or path.name, done, total)
    return digest.hexdigest()


def write_stamp(folder: Path, name: str, files: Mapping[str, tuple[int, str]]) -> None:
    """Write ``<folder>/.cassr-install.json`` atomically; ``files``: relative path → ``(size, sha256)``."""
    record = {
        "schema": 1,
        "name": name,
        "installed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cassr_version": __version__,
        "files": {path: {"size": int(size), "sha256": sha} for path, (size, sha) in sorted(files.items())},
    }
    write_atomic(folder / STAMP_NAME, (json.dumps(record, indent=2) + "\n").encode("utf-8"))


def read_stamp(folder: Path) -> Stamp | None:
    """The files stamped in ``folder``, ``None`` without a stamp; :class:`WeightsCorruptError` if damaged."""
    path = folder / STAMP_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(p): (int(v["size"]), str(v["sha256"])) for p, v in data["files"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsCorruptError(
            f"install stamp {path} is damaged ({type(err).__name__}: {err})",
            hint=f"run: {download_command(folder.name, folder.parent, force=True)}",
        ) from None


def download_command(names: str | Sequence[str], weights_dir: Path, *, force: bool = False) -> str:
    """The exact command that (re)installs ``names``, naming ``--weights-dir`` only where needed."""
    parts = ["cassr", "download-weights"] + (["--force"] if force else [])
    if resolve_weights_dir(None).expanduser().resolve() != weights_dir.expanduser().resolve():
        parts += ["--weights-dir", str(weights_dir)]
    return shlex.join(parts + ([names] if isinstance(names, str) else list(names)))


def check_model(
    weights_dir: Path, name: str, *, rehash: bool = False, progress: Progress | None = None
) -> tuple[Stamp | None, list[FileProblem]]:
    """The stamp of model ``name`` (``None``: not installed) and its stamped files that fail: missing or
    of another size (cheap), and with ``rehash`` of another sha256. WeightsCorruptError: damaged stamp."""
    folder = weights_dir / name
    stamp = read_stamp(folder) if folder.is_dir() else None
    problems = []
    for rel, (size, sha) in (stamp or {}).items():
        if not (path := folder / rel).is_file():
            problems.append(FileProblem(rel, "missing", str(size), "absent"))
        elif (actual := path.stat().st_size) != size:
            problems.append(FileProblem(rel, "size", f"{size} bytes", f"{actual} bytes"))
        elif rehash and (digest := sha256_file(path, progress, f"{name}/{rel}")) != sha:
            problems.append(FileProblem(rel, "sha256", sha, digest))
    return stamp, problems


def require_installed(weights_dir: Path, name: str) -> Path:
    """The folder of model ``name`` after :func:`require_all_installed`."""
    require_all_installed(weights_dir, [name])
    return weights_dir / name


def require_all_installed(weights_dir: Path, names: Sequence[str]) -> None:
    """The cheap load-time check (stamp + file sizes) of several models, before touching a GPU: one error
    names every model that fails, one hint is the command that fixes them all.

    Raises:
        WeightsMissingError: no stamp, or a stamped file is gone (corrupt models are named too).
        WeightsCorruptError: a stamped file has another size, or a stamp is damaged (hint: ``--force``).
    """
    missing: dict[str, str] = {}
    corrupt: dict[str, str] = {}
    for name in dict.fromkeys(names):
        where = f"weights {name!r} in {weights_dir}"
        try:
            stamp, problems = check_model(weights_dir, name)
        except WeightsCorruptError as err:
            corrupt[name] = err.message
            continue
        if stamp is None:
            started = (weights_dir / name).is_dir()
            state = "is incomplete (no install stamp)" if started else "is not installed"
            missing[name] = f"weights {name!r} {state} in {weights_dir}"
        elif gone := [p.path for p in problems if p.kind == "missing"]:
            missing[name] = f"{where}: {len(gone)} file(s) missing: {', '.join(gone)}"
        elif problems:
            corrupt[name] = f"{where} fail the integrity check: " + "; ".join(p.describe() for p in problems)
    if missing or corrupt:
        fixes = [download_command(list(missing), weights_dir)] if missing else []
        fixes += [download_command(list(corrupt), weights_dir, force=True)] if corrupt else []
        error = WeightsMissingError if missing else WeightsCorruptError
        raise error("; ".join([*missing.values(), *corrupt.values()]), hint="run: " + " && ".join(fixes))


class FilePlan(NamedTuple):
    """``present`` (nothing to do), ``download``, ``resume`` (a ``.part`` of ``have`` bytes exists) or
    ``check`` (an unstamped file of the right size: hashed before deciding); ``label``: ``model/path``."""

    entry: WeightFile
    dest: Path
    action: str
    label: str
    have: int = 0

    @property
    def part(self) -> Path:  # the partial download next to ``dest``
        return self.dest.with_name(self.dest.name + ".part")


def plan_model(weights_dir: Path, model: ModelSpec, *, force: bool = False) -> list[FilePlan]:
    """What installing ``model`` has to do per file, without hashing or network access."""
    folder = weights_dir / model.name
    stamp = read_stamp(folder) if folder.is_dir() and not force else None
    plans = []
    for entry in model.files:
        plan = FilePlan(entry, folder / entry.path, "download", f"{model.name}/{entry.path}")
        size = plan.dest.stat().st_size if plan.dest.is_file() else None
        have = plan.part.stat().st_size if plan.part.is_file() else 0
        if force:
            plans.append(plan)
        elif stamp and stamp.get(entry.path) == (size, entry.sha256):
            plans.append(plan._replace(action="present"))
        elif size is not None and (size == entry.size or entry.size_derived):
            plans.append(plan._replace(action="check"))
        else:
            plans.append(plan._replace(action="resume", have=have) if have else plan)
    return plans

