"""``--shard K/N``: a deterministic share of the planned outputs, balanced by pixel count.

Every one of the N processes plans the whole batch (same sources, same output names), reads each
input's size from its header (no decoding) and makes the same assignment: inputs in decreasing pixel
count, each to the shard with the least pixels so far (ties: the lower shard; equal sizes: the earlier
output name). The N shares are disjoint, cover every output, and differ in pixels by at most one image.
Each shard keeps the plan's order. The assignment covers all planned outputs, finished or not, so it
does not change when a job array is re-run.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from cassr_cli.io.naming import PlannedOutput

logger = logging.getLogger(__name__)


def header_pixels(path: Path) -> int:
    """Pixels of the image at ``path`` from its header only (Pillow opens lazily); 1 when it cannot be
    read, so an unreadable input still lands in exactly one shard (where it fails as it would anyway)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception:  # unreadable, missing, not an image: it is reported when processed
        logger.debug("no size for %s", path, exc_info=True)
        return 1
    return max(1, width * height)


def assign_shards(weights: Sequence[int], names: Sequence[str], count: int) -> list[int]:
    """The shard (0-based) of each item: largest first, each to the least-loaded shard.

    Args:
        weights: the cost of each item (pixels).
        names: a unique name per item that breaks ties between equal weights (the output path).
        count: the number of shards.
    """
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], names[i]))
    loads = [(0, shard) for shard in range(count)]  # a heap of (pixels so far, shard)
    assignment = [0] * len(weights)
    for i in order:
        load, shard = heapq.heappop(loads)
        assignment[i] = shard
        heapq.heappush(loads, (load + weights[i], shard))
    return assignment


def select_shard(
    outputs: Sequence[PlannedOutput],
    index: int,
    count: int,
    *,
    pixels: Callable[[Path], int] = header_pixels,
) -> tuple[list[PlannedOutput], str]:
    """Shard ``index`` (1-based) of ``count`` of ``outputs``, in plan order, and a note describing it."""
    if count == 1:
        return list(outputs), f"shard 1/1: all {len(outputs)} image(s)"
    weights = [pixels(p.item.path) for p in outputs]
    assignment = assign_shards(weights, [str(p.output) for p in outputs], count)
    chosen = [p for p, shard in zip(outputs, assignment, strict=True) if shard == index - 1]
    mine = sum(w for w, shard in zip(weights, assignment, strict=True) if shard == index - 1)
    note = (
        f"shard {index}/{count}: {len(chosen)} of {len(outputs)} image(s), "
        f"{mine / 1e6:.1f} of {sum(weights) / 1e6:.1f} megapixels"
    )
    return chosen, note
