"""Out of device memory on a tile: halve the tile batch, then the tile, and run the stage again.

Used by the tiled latent stages (stage 2 and the SCEdit activation), so they shrink the same way. The
spandrel activation has its own pixel-tile loop (``engine/activation.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from cassr_cli.errors import TileOutOfMemoryError
from cassr_cli.runtime.device import free_device_memory, is_out_of_memory

logger = logging.getLogger(__name__)

T = TypeVar("T")


def run_with_backoff(
    run: Callable[[int, int], T],
    *,
    tile: int,
    batch: int,
    min_tile: int,
    align: int,
    device: torch.device,
    what: str,
    hint: str,
    before_retry: Callable[[], None] | None = None,
) -> tuple[T, int, int, int]:
    """``run(tile, batch)``, retried after out-of-memory errors with half the tile batch, then half the
    tile (while it stays ≥ ``min_tile`` and a multiple of ``align`` pixels).

    Args:
        what: the stage, for messages ("stage 2"); hint: what the user can do when nothing fits.
        before_retry: called before each retry (e.g. to rewind the image's generator).

    Returns ``(result, tile, batch, retries)``.

    Raises:
        TileOutOfMemoryError: still out of memory at the smallest tile, one at a time.
    """
    retries = 0
    while True:
        try:
            return run(tile, batch), tile, batch, retries
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            free_device_memory(device)
            retries += 1
            if batch > 1:
                batch //= 2
            elif tile // 2 >= min_tile and (tile // 2) % align == 0:
                tile //= 2
            else:
                raise TileOutOfMemoryError(
                    f"out of device memory in {what} even with {tile}-pixel tiles, one at a time", hint=hint
                ) from err
            logger.warning("out of device memory in %s; retrying with tile %d px, tile batch %d", what, tile, batch)
            if before_retry is not None:
                before_retry()
