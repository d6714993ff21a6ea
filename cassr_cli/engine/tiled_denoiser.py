"""The tiled denoiser: ``denoiser(x_full, t) → prediction_full``, in the style of k-diffusion's denoiser
wrappers, so the sampling loop is the stock one (``engine/sampling.py``) and knows nothing of tiles.

Per call (one per sampling step) the denoiser

1. optionally rolls the latent (and every condition) by this step's grid shift (``shifts``: tiles without
   overlap on a grid that moves every step, as SpotDiffusion / Tiled Diffusion's random shift);
2. cuts the latent into the tiles of its one :class:`~cassr_cli.tiling.plan.TilePlan`, ``tile_batch`` at a
   time, and crops every *condition* the same way;
3. calls the per-tile model on each batch and blends the predictions into one full-size prediction with
   the plan's one window (:class:`~cassr_cli.tiling.blend.TileBlender`), then rolls it back.

Extension point — the per-tile model. Anything with the :class:`TileModel` call signature works::

    model(x: [T, C, th, tw], t: 0-d tensor, batch: TileBatch, crops: {name: [T, C', th·f, tw·f]}) → [T, C, th, tw]

``x`` is the batch's tiles of the denoiser's input, ``crops`` the same tiles cut from each condition given
to the denoiser (``conditions={name: [1, C', h·f, w·f]}``); a condition may be ``f`` times larger than the
latent on both axes (an image-space condition such as an up-sampled LR image at ``f = 8``), and its crop is
the tile scaled by ``f``. ``batch`` says which step, which batch of the plan and which tiles these are.
Stage 2's multi-attention guidance is one such model (:class:`~cassr_cli.engine.guided_unet.MultiAttentionModel`:
guidance rows, CFG rows, the guidance bank); a UNet with skip-connection tuners conditioned on an
up-sampled image is another — it only needs the crops. Predictions may come in any float dtype; they are
blended in float32.

Latents are ``[1, C, h, w]`` on the compute device; noise is never drawn here (the sampler's generator
owns all randomness), so results do not depend on the tile batch or the batch order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cassr_cli.tiling.blend import TileBlender, TileStack
from cassr_cli.tiling.plan import Tile, TilePlan
from cassr_cli.tiling.shift import GridShifts

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class TileBatch:
    """Which tiles a model call gets.

    Attributes:
        step: the denoiser call this batch belongs to (0 for the first sampling step).
        index: the batch's index in the plan (the same tiles at every step of an unshifted plan).
        tiles: the tiles, in the frame of the rolled latent.
        shift: the step's grid shift ``(dy, dx)`` in latent pixels: tile row ``y`` is latent row
            ``(y + dy) mod h`` (``(0, 0)`` without shifting).
    """

    step: int
    index: int
    tiles: tuple[Tile, ...]
    shift: tuple[int, int] = (0, 0)


class TileModel(Protocol):
    """The per-tile model a :class:`TiledDenoiser` calls (see the module docstring)."""

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, batch: TileBatch, crops: Mapping[str, torch.Tensor]
    ) -> torch.Tensor: ...


@dataclass
class DenoiseStats:
    """Counters and timings of one image's denoising (``--json`` stats); the denoiser counts tiles and
    steps, the tile model its UNet calls and rows."""

    seconds: float = 0.0
    guidance_seconds: float = 0.0
    steps: int = 0
    tiles: int = 0
    unet_calls: int = 0
    unet_rows: int = 0
    guidance_cache_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class TiledDenoiser:
    """``denoiser(x, t)``: the blended prediction of ``model`` over ``plan``'s tiles.

    Args:
        model: the per-tile model.
        plan: tiles over the latent (the latent's ``h × w`` is the plan's area).
        tile_batch: tiles per model call.
        conditions: ``{name: [1, C', h·f, w·f]}`` cropped per tile for the model (integer ``f ≥ 1``).
        shifts: per-step grid shifts (tiles then move every step; the plan should not overlap), or None.
        steps: how many calls to expect (for progress).
        progress: ``progress(done, total)`` after each tile batch.
        stats: counters to fill (shared with the model).
    """

    def __init__(
        self,
        model: TileModel,
        plan: TilePlan,
        *,
        tile_batch: int,
        conditions: Mapping[str, torch.Tensor] | None = None,
        shifts: GridShifts | None = None,
        steps: int = 1,
        progress: ProgressFn | None = None,
        stats: DenoiseStats | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.plan = plan
        self.batches = list(plan.batches(tile_batch))
        self.conditions = dict(conditions or {})
        self.factors = {name: _factor(c, plan) for name, c in self.conditions.items()}
        self.shifts = shifts
        self.steps = steps
        self.progress = progress
        self.stats = stats if stats is not None else DenoiseStats()
        self.stats.tiles = len(plan)
        self.blender = TileBlender(plan, device=device or torch.device("cpu"), dtype=torch.float32)
        self.calls = 0
        # Buffers reused every step: the input with its tile views made once (cutting a batch is one
        # concatenation) and the stack of all tiles' predictions (writing a batch is one copy, blending a
        # step one fold), so the host launches few operations per step.
        self._input: torch.Tensor | None = None
        self._input_views: dict[Tile, torch.Tensor] = {}
        self._stack: TileStack | None = None
        self._crops: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction ``[1, C, h, w]`` (float32) for the latent ``x`` ``[1, C, h, w]`` at timestep ``t``."""
        if x.shape[0] != 1 or tuple(x.shape[-2:]) != (self.plan.height, self.plan.width):
            raise ValueError(f"latent {tuple(x.shape)} does not match the plan [1, C, {self.plan.height}, {self.plan.width}]")
        start = time.perf_counter()
        step = self.calls
        self.calls += 1
        shift = self.shifts(step) if self.shifts is not None else (0, 0)
        if self._input is None or self._input.shape != x.shape or self._input.dtype != x.dtype:
            self._input = torch.empty_like(x)
            self._input_views = self.blender.views(self._input)
            self._stack = TileStack(self.blender, x.shape[1])
        assert self._stack is not None
        self._input.copy_(_roll(x, shift, 1))
        conditions = None
        for index, tiles in enumerate(self.batches):
            crops = self._crops.get(index)
            if crops is None:
                if conditions is None:
                    conditions = {name: _roll(c, shift, self.factors[name]) for name, c in self.conditions.items()}
                crops = {name: crop(c, tiles, self.factors[name]) for name, c in conditions.items()}
                if self.shifts is None:  # the conditions never change, nor do their crops
                    self._crops[index] = crops
            x_tiles = torch.cat([self._input_views[tile] for tile in tiles])
            self._stack.put(tiles, self.model(x_tiles, t, TileBatch(step, index, tiles, shift), crops))
            if self.progress is not None:
                self.progress(step * len(self.batches) + index + 1, self.steps * len(self.batches))
        self.stats.steps = self.calls
        self.stats.seconds += time.perf_counter() - start
        return _roll(self._stack.blend(), (-shift[0], -shift[1]), 1)


def crop(x: torch.Tensor, tiles: tuple[Tile, ...], factor: int = 1) -> torch.Tensor:
    """``[len(tiles)·B, C, th·f, tw·f]``: the tiles (scaled by ``factor``) cut from ``x`` ``[B, C, H, W]``,
    tile-major."""
    parts = []
    for tile in tiles:
        rows, cols = (tile.scaled(factor) if factor != 1 else tile).slices()
        parts.append(x[..., rows, cols])
    return torch.cat(parts, 0)


def _roll(x: torch.Tensor, shift: tuple[int, int], factor: int) -> torch.Tensor:
    """``x`` rolled so that row ``y`` of the result is row ``y + dy·f`` of ``x`` (and likewise columns)."""
    dy, dx = shift
    if dy == 0 and dx == 0:
        return x
    return torch.roll(x, shifts=(-dy * factor, -dx * factor), dims=(-2, -1))


def _factor(condition: torch.Tensor, plan: TilePlan) -> int:
    """The integer scale of a condition relative to the plan's area."""
    h, w = condition.shape[-2:]
    f = h // plan.height
    if f < 1 or h != f * plan.height or w != f * plan.width:
        raise ValueError(f"condition {h}×{w} is not an integer multiple of the latent {plan.height}×{plan.width}")
    return f
