"""Per-image seeds: derived from (base seed, relative path), so results never depend on batch order,
worker count or which other files are in the batch. Torch-free."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and a path of labels/counters (stable across runs and platforms).
    File names that are not UTF-8 hash as their own bytes (``surrogateescape``)."""
    text = "\0".join(str(p) for p in (seed, *parts))
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def image_seed(base_seed: int, key: str) -> int:
    """A 63-bit seed for the image whose relative output path is ``key``."""
    return derive_seed(base_seed, key)
