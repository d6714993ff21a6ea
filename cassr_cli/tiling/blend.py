"""Blending tile outputs: one window function and one accumulator, used by every tiled stage.

The window is separable, symmetric on both axes and strictly positive: a raised-cosine ramp of length
``ramp`` at each edge and 1 in between. Where two tiles overlap by exactly ``ramp`` the two ramps sum
to one (sin² + cos²), so the blend is a smooth cross-fade; elsewhere the accumulator normalises by the
summed weights, so any covering plan gives a partition of unity:

    out[p] = Σ_tiles w_t(p) · value_t(p) / Σ_tiles w_t(p)

Invariants (``tests/unit/test_tiling_blend.py``): a constant blends to the same constant, the identity
tiled equals the input, a single tile covering the area equals the untiled value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cassr_cli.tiling.plan import Tile, TilePlan

WINDOW_FLOOR = 1e-3
"""Smallest window weight: keeps the window strictly positive so every covered pixel has weight."""


def ramp_1d(length: int, ramp: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """A symmetric 1-D window of ``length`` samples, float64 on ``device``.

    ``w[i] = max(WINDOW_FLOOR, sin²(π/2 · (i + 0.5) / ramp))`` for the first ``ramp`` samples, mirrored
    at the far end, and 1 between. ``ramp = 0`` gives all ones. ``ramp`` is clipped to ``length // 2``.
    """
    ramp = max(0, min(ramp, length // 2))
    w = torch.ones(length, dtype=torch.float64, device=device)
    if ramp > 0:
        i = torch.arange(ramp, dtype=torch.float64, device=device)
        rise = torch.sin(0.5 * math.pi * (i + 0.5) / ramp) ** 2
        w[:ramp] = rise
        w[length - ramp :] = torch.flip(rise, dims=[0])
    return w.clamp_min(WINDOW_FLOOR)


def window_2d(height: int, width: int, ramp: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """The separable window ``[height, width]`` (float64): outer product of two :func:`ramp_1d`."""
    return ramp_1d(height, ramp, device=device)[:, None] * ramp_1d(width, ramp, device=device)[None, :]


class TileBlender:
    """Precomputed, normalised blend weights for one :class:`TilePlan`.

    Build it once per stage; then for every pass (every denoising step, or once for a one-shot stage)
    start an accumulator with :meth:`zeros`, :meth:`add` each tile's output and read the result — no
    division per pass, because the weights are already a partition of unity.

    The window is separable and the plan is a grid, so a tile's normalised weight is the outer product of
    two 1-D vectors, one per distinct row start and column start. Those are computed once (float64 on the
    CPU, then cast) and kept on ``device``; a tile's 2-D weight is one outer product there, so adding a tile
    never builds weights on the host.

    Args:
        plan: the stage's tile plan (the same object used to cut the inputs).
        device, dtype: where and in what precision the weights and canvas live.
        gain: a factor folded into every weight (e.g. the VAE's latent scale), so values need no extra
            multiply per tile.
        reuse: the plan is blended many times (keep every tile's 2-D weights; a one-pass stage over a large
            canvas computes them per tile instead, so they never add up to a second canvas).
    """

    def __init__(
        self,
        plan: TilePlan,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        reuse: bool = True,
        gain: float = 1.0,
    ) -> None:
        self.plan = plan
        self.device = torch.device(device)
        self.dtype = dtype
        self.reuse = reuse
        # The summed coverage is separable too: total(y, x) = Σ_i w_h(y − y_i) · Σ_j w_w(x − x_j). Two 1-D
        # sums (O(height + width), float64 on the CPU: some devices, e.g. MPS, have no float64).
        ys = sorted({t.y0 for t in plan})
        xs = sorted({t.x0 for t in plan})
        if len(ys) * len(xs) != len(plan):
            raise ValueError("TileBlender needs a grid plan (every row start with every column start)")
        # Per axis: every start's normalised 1-D weights as the rows of one tensor, copied to the device once.
        rows = _normalised(plan.height, ys, ramp_1d(plan.tile_height, plan.overlap)).mul_(gain).to(self.device, dtype)
        cols = _normalised(plan.width, xs, ramp_1d(plan.tile_width, plan.overlap)).to(self.device, dtype)
        self._rows = dict(zip(ys, rows, strict=True))
        self._cols = dict(zip(xs, cols, strict=True))
        self._weights: dict[Tile, torch.Tensor] = {}
        self._batches: dict[tuple[Tile, ...], torch.Tensor] = {}

    def weight(self, tile: Tile) -> torch.Tensor:
        """Normalised weights ``[tile_h, tile_w]`` of ``tile`` (``dtype`` on ``device``)."""
        cached = self._weights.get(tile)
        if cached is not None:
            return cached
        weight = torch.outer(self._rows[tile.y0], self._cols[tile.x0])
        if self.reuse:
            self._weights[tile] = weight
        return weight

    def batch_weight(self, tiles: Sequence[Tile]) -> torch.Tensor:
        """The weights of a tile batch stacked for broadcasting: ``[len(tiles), 1, tile_h, tile_w]`` (kept
        when ``reuse``, so a plan blended every step builds each batch's stack once)."""
        key = tuple(tiles)
        cached = self._batches.get(key)
        if cached is not None:
            return cached
        rows = torch.stack([self._rows[t.y0] for t in tiles])
        cols = torch.stack([self._cols[t.x0] for t in tiles])
        stacked = (rows[:, :, None] * cols[:, None, :])[:, None]  # every tile's outer product at once
        if self.reuse:
            self._batches[key] = stacked
        return stacked

    def views(self, canvas: torch.Tensor) -> dict[Tile, torch.Tensor]:
        """``{tile: canvas[..., tile]}``: views of a canvas that is reused (filled again every pass), so a pass
        adds to them without slicing again."""
        return {tile: canvas[..., tile.y0 : tile.y1, tile.x0 : tile.x1] for tile in self.plan}

    def zeros(self, leading: Sequence[int]) -> torch.Tensor:
        """An empty canvas ``[*leading, height, width]`` to accumulate into."""
        return torch.zeros(*leading, self.plan.height, self.plan.width, device=self.device, dtype=self.dtype)

    def add(self, canvas: torch.Tensor, tile: Tile, value: torch.Tensor) -> None:
        """``canvas[..., tile] += weight(tile) · value`` in place. ``value`` is ``[..., tile_h, tile_w]``
        (any float dtype: the product with the weights is taken in the canvas's precision) and is moved to
        the canvas's device."""
        rows, cols = tile.slices()
        if value.device != canvas.device:
            value = value.to(canvas.device)
        canvas[..., rows, cols].add_(value * self.weight(tile))  # the product is in the weights' dtype

    def add_batch(self, canvas: torch.Tensor, tiles: Sequence[Tile], values: torch.Tensor) -> None:
        """:meth:`add` for a batch: ``values`` ``[len(tiles)·B, C, tile_h, tile_w]`` (tile-major) into a
        ``[B, C, H, W]`` canvas."""
        per_tile = values.shape[0] // len(tiles)
        for j, tile in enumerate(tiles):
            self.add(canvas, tile, values[j * per_tile : (j + 1) * per_tile])

    def blend(self, values: Sequence[tuple[Tile, torch.Tensor]], leading: Sequence[int]) -> torch.Tensor:
        """Blend ``(tile, value)`` pairs into a new canvas ``[*leading, height, width]``."""
        canvas = self.zeros(leading)
        for tile, value in values:
            self.add(canvas, tile, value)
        return canvas


class TileStack:
    """Every tile's value of one pass over a plan, in one tensor ``[T, C, tile_h, tile_w]`` (plan order),
    blended into the canvas in one go by :meth:`blend`.

    Writing a tile batch is one copy (:meth:`put`; batches are runs of consecutive plan tiles), and the
    blend is one weighted multiply plus one ``fold`` when the plan's starts are evenly spaced on both axes
    (what balanced plans usually give), else one add per tile. ``fold`` sums each pixel's tiles in a fixed
    order, so results are deterministic on every device. The stack costs about the canvas's size again
    (tiles overlap), which is why only canvases on the device path use it.

    Args:
        blender: the plan's blender (weights, device, dtype).
        channels: ``C``.
    """

    def __init__(self, blender: TileBlender, channels: int) -> None:
        plan = blender.plan
        self.blender = blender
        self.index = {tile: i for i, tile in enumerate(plan)}
        self.values = torch.zeros(
            len(plan), channels, plan.tile_height, plan.tile_width, device=blender.device, dtype=blender.dtype
        )
        self._weights = blender.batch_weight(list(plan))
        self._stride = _even_stride(plan)

    def put(self, tiles: Sequence[Tile], values: torch.Tensor) -> None:
        """Set the values ``[len(tiles), C, tile_h, tile_w]`` of consecutive plan tiles."""
        first = self.index[tiles[0]]
        self.values[first : first + len(tiles)].copy_(values)

    def blend(self) -> torch.Tensor:
        """The canvas ``[1, C, H, W]`` (a new tensor)."""
        plan = self.blender.plan
        weighted = self.values * self._weights
        if self._stride is not None:
            t, c, th, tw = weighted.shape
            columns = weighted.reshape(t, c * th * tw).t()[None]
            return F.fold(columns, (plan.height, plan.width), (th, tw), stride=self._stride)
        canvas = self.blender.zeros((1, self.values.shape[1]))
        for tile, i in self.index.items():
            canvas[..., tile.y0 : tile.y1, tile.x0 : tile.x1].add_(weighted[i : i + 1])
        return canvas


def _even_stride(plan: TilePlan) -> tuple[int, int] | None:
    """``(stride_h, stride_w)`` when the plan's row and column starts are evenly spaced from 0 to the far
    edge (a ``fold`` grid), else None."""
    strides = []
    for starts, tile, length in (
        (sorted({t.y0 for t in plan}), plan.tile_height, plan.height),
        (sorted({t.x0 for t in plan}), plan.tile_width, plan.width),
    ):
        gaps = {b - a for a, b in zip(starts, starts[1:], strict=False)}
        if len(gaps) > 1 or starts[-1] + tile != length:
            return None
        strides.append(gaps.pop() if gaps else max(1, tile))
    return strides[0], strides[1]


def _normalised(length: int, starts: Sequence[int], ramp: torch.Tensor) -> torch.Tensor:
    """``[len(starts), ramp.numel()]`` (float64): the 1-D window placed at each start, divided by the summed
    coverage of all of them over ``length`` (a handful of operations whatever the number of tiles)."""
    index = (torch.tensor(starts)[:, None] + torch.arange(ramp.numel())).flatten()
    total = torch.zeros(length, dtype=torch.float64).index_add_(0, index, ramp.repeat(len(starts)))
    if not bool((total > 0).all()):
        raise ValueError("tile plan leaves pixels uncovered")  # plan_tiles guarantees coverage
    return ramp / total[index].view(len(starts), ramp.numel())
