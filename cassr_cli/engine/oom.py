"""One out-of-memory back-off for every tiled stage (activation, VAE encode/decode, denoising).

A stage runs with some *size* (a tile, a tile batch); when the device runs out of memory the cached blocks
are returned to the driver, ``shrink`` proposes the next smaller size and the stage runs again from the
start, until it fits or ``shrink`` has nothing smaller (then the image fails with a clear
:class:`~cassr_cli.errors.TileOutOfMemoryError`; the batch goes on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from cassr_cli.errors import TileOutOfMemoryError
from cassr_cli.runtime.device import free_device_memory, is_out_of_memory

logger = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")


def retry_on_oom(
    attempt: Callable[[S], T],
    size: S,
    shrink: Callable[[S], S | None],
    *,
    device: torch.device,
    stage: str,
    hint: str,
    describe: Callable[[S], str] = str,
    before_retry: Callable[[], None] | None = None,
) -> tuple[T, S, int]:
    """``attempt(size)``, retried with ``shrink(size)`` after each out-of-memory error.

    Args:
        attempt: runs the whole stage at one size.
        size: the first size to try.
        shrink: the next smaller size, or None when there is none.
        device: the device whose memory ran out.
        stage: the stage's name, for messages ("stage 1", "VAE decode" …).
        hint: what the user can do when even the smallest size does not fit.
        describe: a size in words, for messages.
        before_retry: called before each retry (e.g. to rewind a random generator).

    Returns:
        The result, the size it ran at, and how many retries it took.

    Raises:
        TileOutOfMemoryError: out of memory at the smallest size.
    """
    retries = 0
    while True:
        try:
            return attempt(size), size, retries
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            free_device_memory(device)
            smaller = shrink(size)
            if smaller is None:
                raise TileOutOfMemoryError(f"out of device memory in {stage} even with {describe(size)}", hint=hint) from err
            logger.warning("out of device memory in %s with %s; retrying with %s", stage, describe(size), describe(smaller))
            retries += 1
            size = smaller
            if before_retry is not None:
                before_retry()
