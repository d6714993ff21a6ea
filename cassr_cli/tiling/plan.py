"""Tile plans: where the tiles of one stage go. Pure Python, no torch.

A :class:`TilePlan` is computed once per stage and used both to cut model inputs and to blend model
outputs, so the two can never disagree. Coordinates are height first: ``Tile(y0, y1, x0, x1)`` with
half-open ranges ``[y0, y1) × [x0, x1)``.

Guarantees (property-tested in ``tests/unit/test_tiling_plan.py``):

* every pixel of the ``height × width`` area is covered by at least one tile;
* every tile lies inside the area and has exactly the plan's tile size;
* tile starts are multiples of ``align``, and the last tile on each axis ends at the far edge;
* neighbouring tiles overlap by at least the requested overlap (starts are spread evenly, so the actual
  overlaps are as equal as alignment allows);
* an area smaller than the tile gets a single tile of the area's size; callers pad the area to a
  multiple of ``align`` first (:func:`padded_size`) and crop back afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Tile:
    """A half-open rectangle ``[y0, y1) × [x0, x1)``."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def scaled(self, factor: int) -> Tile:
        """The same tile in a space ``factor`` times larger (e.g. latent → pixels with factor 8)."""
        return Tile(self.y0 * factor, self.y1 * factor, self.x0 * factor, self.x1 * factor)

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing the last two axes of an array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclass(frozen=True)
class TilePlan:
    """Tiles covering a ``height × width`` area.

    Attributes:
        height, width: the (padded) area the plan covers.
        tile_height, tile_width: the size every tile has (the requested tile, clipped to the area).
        overlap: the requested minimum overlap between neighbours (the blend window's ramp length).
        tiles: row-major tuple of tiles.
    """

    height: int
    width: int
    tile_height: int
    tile_width: int
    overlap: int
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def batches(self, size: int) -> Iterator[tuple[Tile, ...]]:
        """The tiles in consecutive groups of at most ``size`` (the last group may be smaller)."""
        if size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {size}")
        for start in range(0, len(self.tiles), size):
            yield self.tiles[start : start + size]

    def scaled(self, factor: int) -> TilePlan:
        """The same plan in a space ``factor`` times larger."""
        return TilePlan(
            self.height * factor,
            self.width * factor,
            self.tile_height * factor,
            self.tile_width * factor,
            self.overlap * factor,
            tuple(t.scaled(factor) for t in self.tiles),
        )


def padded_size(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ≥ ``size`` (≥ ``multiple``)."""
    if size < 1 or multiple < 1:
        raise ValueError(f"size and multiple must be ≥ 1, got {size}, {multiple}")
    return max(multiple, math.ceil(size / multiple) * multiple)


def axis_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` along one axis of ``length``.

    The first start is 0, the last is ``length - tile`` (snapped to the far edge), and the ones between
    are spread evenly and rounded down to ``align``, so each overlap is at least ``overlap``.
    ``length`` and ``tile`` must be multiples of ``align`` and ``tile <= length``.
    """
    if tile < 1 or length < tile:
        raise ValueError(f"need 1 ≤ tile ≤ length, got tile={tile}, length={length}")
    if not (0 <= overlap < tile):
        raise ValueError(f"need 0 ≤ overlap < tile, got overlap={overlap}, tile={tile}")
    if length % align or tile % align:
        raise ValueError(f"length {length} and tile {tile} must be multiples of align {align}")
    if tile == length:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    last = length - tile
    starts = []
    for i in range(count):
        exact = i * last / (count - 1)
        start = int(exact // align) * align
        starts.append(start)
    starts[-1] = last
    # Rounding down can only increase overlaps, except it must never reorder or duplicate starts.
    return sorted(set(starts))


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile size (a multiple of ``multiple``, at most ``tile``) that covers ``length`` with as
    few tiles as ``tile`` itself would need at this ``overlap``.

    Fixed-size tiles waste work when the length is just above a multiple of the stride (a 512-pixel
    image in 256-pixel tiles with 32 overlap needs 3 tiles of 256 = 768 pixels of work; balanced, 3 tiles
    of 192 = 576). ``length`` itself is returned when one tile covers it.
    """
    if tile >= length:
        return length
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    size = math.ceil(size / multiple) * multiple
    smallest = math.ceil((overlap + 1) / multiple) * multiple  # a tile must be longer than the overlap
    return min(max(size, smallest), tile)


def plan_tiles(
    height: int, width: int, tile: int, overlap: int, align: int = 8, *, multiple: int | None = None
) -> TilePlan:
    """Plan tiles of at most ``tile`` with at least ``overlap`` overlap over ``height × width``.

    ``height`` and ``width`` must be multiples of ``align`` (pad first with :func:`padded_size`); tile
    starts are multiples of ``align`` and tile sizes multiples of ``multiple`` (default ``align``; e.g.
    latent tiles start anywhere but must be multiples of 8 for the UNet). On each axis the tile is clipped
    to the area (small areas get one tile) and then shrunk to :func:`balanced_tile`, so no work is spent
    on needless overlap.
    """
    multiple = align if multiple is None else multiple
    if multiple % align:
        raise ValueError(f"tile multiple {multiple} must be a multiple of align {align}")
    if height % align or width % align:
        raise ValueError(f"area {height}×{width} must be padded to a multiple of {align} first")
    if height % multiple or width % multiple:
        raise ValueError(f"area {height}×{width} must be a multiple of the tile multiple {multiple}")
    if tile < multiple or tile % multiple:
        raise ValueError(f"tile {tile} must be a positive multiple of {multiple}")
    axes = [_plan_axis(height, tile, overlap, align, multiple), _plan_axis(width, tile, overlap, align, multiple)]
    (tile_h, ov_h, ys), (tile_w, ov_w, xs) = axes
    tiles = tuple(Tile(y, y + tile_h, x, x + tile_w) for y in ys for x in xs)
    # The blend ramp: the overlap of the axes that are actually split (a single tile needs none).
    split = [ov for _, ov, starts in axes if len(starts) > 1]
    ramp = min(split) if split else min(overlap, tile_h, tile_w)
    return TilePlan(height, width, tile_h, tile_w, max(0, ramp), tiles)


def _plan_axis(length: int, tile: int, overlap: int, align: int, multiple: int) -> tuple[int, int, list[int]]:
    """``(tile size, overlap, starts)`` on one axis: clipped to the length, overlap below the tile,
    balanced, then spread."""
    size = min(tile, length)
    # An overlap of a whole tile (or more) would never advance: keep at least one multiple of new pixels.
    overlap = max(0, min(overlap, size - multiple))
    size = balanced_tile(length, size, overlap, multiple)
    overlap = max(0, min(overlap, size - align))
    return size, overlap, axis_starts(length, size, overlap, align)
