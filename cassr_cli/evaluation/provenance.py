"""What made each folder of an evaluation, so a re-run reuses outputs only when they still apply. Torch-free.

Every output folder (``OUT/lr``, ``OUT/<variant>``) holds ``eval.json``: the recipe of its files (the
variant's options, the sha256 of its model files, the inputs' recipe) and, for variants, the per-image
stats of the run that produced each output. A re-run with another recipe for a folder that already has
outputs is a usage error unless ``--overwrite`` (then everything is recomputed) — a stale output is
never scored as if it were new. Model files are identified by sha256: from the install stamp for
installed models (verified at download), hashed once per run for paths.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cassr_cli.errors import UsageError
from cassr_cli.io.atomic import write_atomic

RECORD_NAME = "eval.json"
SCHEMA = 1
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


@dataclass
class FolderRecord:
    """The content of one folder's ``eval.json``.

    Attributes:
        recipe: what decides the folder's files (compared between runs).
        images: per image name, what the producing run recorded (``seconds``, ``stats``).
    """

    recipe: dict[str, Any]
    images: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "recipe": self.recipe, "images": self.images}


def record_path(folder: Path) -> Path:
    return folder / RECORD_NAME


def read_record(folder: Path) -> FolderRecord | None:
    """The folder's record, or None if it has none (or an unreadable one)."""
    try:
        data = json.loads(record_path(folder).read_text(encoding="utf-8"))
        return FolderRecord(dict(data["recipe"]), dict(data.get("images", {})))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(folder: Path, record: FolderRecord) -> None:
    """Write ``eval.json`` atomically."""
    text = json.dumps(record.to_json(), indent=1, sort_keys=True, default=str)
    write_atomic(record_path(folder), (text + "\n").encode("utf-8"))


def open_folder(folder: Path, recipe: Mapping[str, Any], *, what: str, overwrite: bool) -> FolderRecord:
    """The record to continue in ``folder`` for ``recipe``.

    Same recipe: the stored record (its per-image stats are kept). No record, or ``overwrite``: a fresh
    one. Another recipe while the folder holds image files: a usage error naming what changed.
    """
    recipe = json.loads(json.dumps(dict(recipe), default=str))  # compare as it is stored
    stored = read_record(folder)
    if overwrite or stored is None:
        return FolderRecord(recipe)
    if stored.recipe == recipe:
        return stored
    if not any(p.suffix.lower() == ".png" for p in folder.rglob("*") if p.is_file()):
        return FolderRecord(recipe)
    changed = _differences(stored.recipe, recipe)
    raise UsageError(
        f"{folder} holds {what} made with other settings ({changed})",
        hint="add --overwrite to recompute them, or use another OUT folder (or variant name)",
    )


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    keys = sorted(set(old) | set(new))
    parts = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            parts.append(_differences(a, b, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}: {_short(a)} → {_short(b)}")
    return "; ".join(p for p in parts if p)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


class ModelHasher:
    """sha256 of the model files a configuration loads, each file hashed at most once per run."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def model_files(self, config: Any) -> list[dict[str, str]]:
        """``[{"role", "file", "sha256"}]`` for the activation model and, with diffusion, every weight file
        of the base model and the adapter.

        Raises:
            WeightsMissingError, WeightsCorruptError, UsageError: as resolving the models for a run.
        """
        from cassr_cli.engine.components import resolve_model_paths

        paths = resolve_model_paths(config)
        if paths.activation is None:  # the built-in bicubic activation: no file
            out = [{"role": "activation", "file": config.activation, "sha256": "built-in"}]
        else:
            out = [self._entry("activation", paths.activation)]
        if paths.base is not None:
            weights = sorted(p for p in paths.base.rglob("*") if p.is_file() and p.suffix.lower() in _WEIGHT_SUFFIXES)
            out += [self._entry("base", p, root=paths.base) for p in weights]
        if paths.adapter is not None:
            out.append(self._entry("adapter", paths.adapter))
        return out

    def _entry(self, role: str, path: Path, *, root: Path | None = None) -> dict[str, str]:
        return {"role": role, "file": str(path), "sha256": self._sha256(path, root)}

    def _sha256(self, path: Path, root: Path | None) -> str:
        real = path.resolve()
        if real not in self._cache:
            self._cache[real] = _stamped_sha256(path, root) or _hash(path)
        return self._cache[real]


def _stamped_sha256(path: Path, root: Path | None) -> str | None:
    """The sha256 the install stamp records for ``path`` (verified at download), if it is stamped with
    the file's current size."""
    from cassr_cli.weights.store import read_stamp

    folder = root or path.parent
    try:
        stamp = read_stamp(folder)
    except Exception:
        return None
    if stamp is None:
        return None
    entry = stamp.entry(path.relative_to(folder).as_posix())
    if entry is None or entry.size != path.stat().st_size:
        return None
    return entry.sha256


def _hash(path: Path) -> str:
    from cassr_cli.weights.store import sha256_file

    return sha256_file(path)
