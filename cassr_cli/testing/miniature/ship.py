"""Copy a finished recipe's shippable files (``base/``, ``adapter.safetensors``) to DEST and write
DEST/README.md from its ``report.json``, with the sha256 of every file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from cassr_cli.testing.miniature.readme import render_readme

SHIPPED = ("base", "adapter.safetensors")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship_miniature(out_dir: Path, dest: Path) -> Path:
    """Copy, hash and document; returns DEST/README.md."""
    report: dict[str, Any] = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        source, target = out_dir / name, dest / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
    files = sorted(p for p in dest.rglob("*") if p.is_file() and p.name != "README.md")
    listing = [(p.relative_to(dest).as_posix(), p.stat().st_size, sha256(p)) for p in files]
    readme = dest / "README.md"
    readme.write_text(render_readme(report, listing), encoding="utf-8")
    return readme
