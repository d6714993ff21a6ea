"""What is installed in a weights directory (for ``cassr doctor`` and ``cassr weights list``).

Built on the install stamps of :mod:`cassr_cli.weights.store`: cheap (sizes only, no hashing).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cassr_cli.errors import CassrError
from cassr_cli.weights.manifest import Manifest, load_manifest
from cassr_cli.weights.store import download_command, model_status, read_stamp

logger = logging.getLogger(__name__)


def inventory(weights_dir: Path, manifest: Manifest | None = None) -> list[dict[str, Any]]:
    """One entry ``{"name", "status", "detail"}`` per model.

    Every manifest model is listed (``installed``, ``partial``, ``corrupt`` or ``missing``; optional models
    that are missing say so), followed by stamped folders that the manifest does not know
    (``installed (not in manifest)``, e.g. test weights). ``manifest`` defaults to
    ``$CASSR_MANIFEST`` or the packaged one; if that cannot be read, one ``error`` entry says why.
    """
    if manifest is None:
        try:
            manifest = load_manifest()
        except CassrError as err:
            return [{"name": "manifest", "status": "error", "detail": err.message}]
    entries: list[dict[str, Any]] = []
    for model in manifest.models:
        st = model_status(weights_dir, model)
        if st.status == "installed":
            detail = f"{_size(model.total_size)}, {model.licence.name}"
        elif st.status == "missing":
            detail = f"run: {download_command(model.name, weights_dir)}" if model.default else "optional"
        else:
            detail = st.detail
        entries.append({"name": model.name, "status": st.status, "detail": detail})
    if weights_dir.is_dir():
        known = set(manifest.names)
        for folder in sorted(p for p in weights_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name in known:
                continue
            try:
                stamp = read_stamp(folder)
            except CassrError:
                stamp = None
            status = "installed (not in manifest)" if stamp else "unknown folder"
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            entries.append({"name": folder.name, "status": status, "detail": _size(size)})
    return entries


def _size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
