"""The metadata of a ``.safetensors`` file, read from its header without torch or safetensors.

A safetensors file starts with an 8-byte little-endian header length and a JSON header whose
``__metadata__`` entry maps strings to strings. Reading only that tells which kind of cassr model a file
is (``kind = "scedit"``, ``format = "cassr-multiattn-adapter"``) before anything heavy is imported.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100_000_000  # the format's own limit


def read_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of the safetensors file ``path`` (``{}`` when it has none), or None when the
    file is not a readable safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        return None
    return {str(k): str(v) for k, v in meta.items()}
