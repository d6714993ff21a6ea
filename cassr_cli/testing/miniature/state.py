"""Resumable parts: each part of the recipe keeps a checkpoint while it runs and a ``done.json`` when it
has finished, so an interrupted recipe continues where it stopped and never redoes a finished part.

Layout under the recipe's output folder: ``parts/<name>/checkpoint.pt`` (model, optimizer, EMA and LR
schedule state, step, seconds spent so far; written atomically, read with ``weights_only=True``) and
``parts/<name>/done.json`` (what the part measured and its wall time).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
DONE = "done.json"


class Part:
    """One part's folder, checkpoint and completion record.

    Args:
        out_dir: the recipe's output folder.
        name: the part's name (``vae``, ``unet``, ``adapter``, ``evaluate``).
    """

    def __init__(self, out_dir: Path, name: str) -> None:
        self.name = name
        self.folder = out_dir / "parts" / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self._started = time.perf_counter()
        self._seconds_before = 0.0
        self._cpu_started = _cpu_seconds()
        self._cpu_before = 0.0

    def done(self) -> dict[str, Any] | None:
        """The completion record, or None while the part has not finished."""
        path = self.folder / DONE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint (and the seconds it had already taken), or None."""
        path = self.folder / CHECKPOINT
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        self._seconds_before = float(state.get("seconds", 0.0))
        self._cpu_before = float(state.get("cpu_seconds", 0.0))
        self._started = time.perf_counter()
        self._cpu_started = _cpu_seconds()
        return state

    def seconds(self) -> float:
        """Wall time of this part so far, across resumed runs (time after the last checkpoint of an
        interrupted run is lost, so it is a lower bound then)."""
        return self._seconds_before + time.perf_counter() - self._started

    def cpu_seconds(self) -> float:
        """CPU time (user + system, this process and its finished children) of this part so far."""
        return self._cpu_before + _cpu_seconds() - self._cpu_started

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` (plus the seconds so far) atomically."""
        path = self.folder / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save({**state, "seconds": self.seconds(), "cpu_seconds": self.cpu_seconds()}, tmp)
        os.replace(tmp, path)

    def finish(self, record: dict[str, Any]) -> dict[str, Any]:
        """Mark the part finished with ``record`` (``seconds`` added) and drop its checkpoint."""
        record = {**record, "seconds": round(self.seconds(), 1), "cpu_seconds": round(self.cpu_seconds(), 1)}
        tmp = self.folder / (DONE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / DONE)
        (self.folder / CHECKPOINT).unlink(missing_ok=True)
        note(f"{self.name}: done in {record['seconds'] / 60:.1f} min")
        return record


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def note(message: str) -> None:
    """A progress line on stderr."""
    sys.stderr.write(f"[miniature] {message}\n")
    sys.stderr.flush()


def progress_bar(total: int, initial: int, description: str) -> Any:
    """A tqdm bar on stderr (redrawn every second on a terminal, every 30 s in a log file)."""
    from tqdm import tqdm

    interval = 1.0 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=initial, desc=description, file=sys.stderr, mininterval=interval, dynamic_ncols=True)


def warmup_cosine(warmup: int, total: int) -> Any:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
