"""What is installed in a weights directory (for ``cassr doctor``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def inventory(weights_dir: Path) -> list[dict[str, Any]]:
    """One entry per model folder: ``{"name", "status", "detail"}``, sorted by name."""
    if not weights_dir.is_dir():
        return []
    entries = []
    for folder in sorted(p for p in weights_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        entries.append({"name": folder.name, "status": "present", "detail": f"{size / 2**20:.1f} MiB"})
    return entries
