"""Per-image seeds: derived from (base seed, relative path), so results never depend on batch order,
worker count or which other files are in the batch. Torch-free."""

from __future__ import annotations

import hashlib


def image_seed(base_seed: int, key: str) -> int:
    """A 63-bit seed for the image whose relative output path is ``key``."""
    digest = hashlib.sha256(f"{base_seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
