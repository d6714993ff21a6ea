"""Tiled VAE encode and decode with blended overlaps.

Our own rather than diffusers' ``enable_tiling``: diffusers keeps the whole image and the output canvas
on the GPU (device memory then grows with the image) and cross-fades only the overlap with the tile
above and to the left. Here the pixel canvases live where the image's :class:`CanvasPlacement` says (on the
device when they fit, else on the host with one tile on the device at a time), and tiles use the engine's
one blend window and plan (docs/decisions.md).

Half precision can overflow: a tile whose fp16/bf16 encode or decode is not finite is computed again in
fp32 (the VAE is upcast for that tile and cast back). The check does not wait for the device per tile:
each tile's "all finite" flag stays on the device, a non-finite tile contributes nothing to the canvas, and
after the last tile one read of all flags says which tiles to redo.

Out of device memory halves the VAE tile (down to :data:`MIN_VAE_TILE_PX`) and runs the pass again.

Shapes: pixels ``[1, 3, H, W]`` float32 in [0, 1]; latents ``[1, 4, H/f, W/f]`` float32, already
multiplied by the VAE's scaling factor, on the compute device, where ``f`` is the VAE's down-sampling
factor (:func:`vae_scale_factor`: 8 for SD 1.x/2.x). ``H`` and ``W`` are multiples of ``f``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cassr_cli.engine.batch_size import VAE_FALLBACK, resolve_tile_batch, vae_tile_bytes
from cassr_cli.engine.canvas import CanvasPlacement, TileAccumulator
from cassr_cli.engine.oom import retry_on_oom
from cassr_cli.tiling.blend import TileBlender, TileStack
from cassr_cli.tiling.plan import Tile, TilePlan, plan_tiles

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]

MIN_VAE_TILE_PX = 128
"""Smallest VAE tile (pixels) tried after out-of-memory errors."""


def vae_scale_factor(vae: torch.nn.Module) -> int:
    """Pixels per latent pixel of an ``AutoencoderKL``: ``2 ** (levels - 1)`` (diffusers' convention; 8 for
    SD 1.x/2.x, 4 for a three-level VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_plan(latent_h: int, latent_w: int, tile_px: int, factor: int = 8, overlap_px: int | None = None) -> TilePlan:
    """The latent-space plan for VAE tiles of ``tile_px`` pixels (overlap defaults to a quarter tile) for a
    VAE that down-samples by ``factor``."""
    tile = max(1, tile_px // factor)
    overlap = (tile_px // 4 if overlap_px is None else overlap_px) // factor
    return plan_tiles(latent_h, latent_w, tile, min(overlap, tile - 1), align=1)


def vae_tile_batch(
    requested: int, height: int, width: int, *, tile_px: int, factor: int, dtype: torch.dtype, free_bytes: int | None
) -> int:
    """VAE tiles per call for an image of ``height × width`` pixels (multiples of ``factor``) in ``tile_px``
    tiles: ``requested``, or for auto (0) as many as fit ``free_bytes``
    (:func:`~cassr_cli.engine.batch_size.resolve_tile_batch`)."""
    plan = latent_plan(height // factor, width // factor, tile_px, factor)
    pixels = plan.tile_height * plan.tile_width * factor * factor
    return resolve_tile_batch(
        requested, tiles=len(plan), tile_bytes=vae_tile_bytes(pixels, dtype), free_bytes=free_bytes, fallback=VAE_FALLBACK
    )


@dataclass
class VaeTileStats:
    """What one tiled encode or decode did (``--json`` stats)."""

    tiles: int = 0
    fp32_retries: int = 0
    oom_retries: int = 0
    tile_px: int = 0
    tile_batch: int = 0

    def merge(self, other: VaeTileStats) -> VaeTileStats:
        return VaeTileStats(
            self.tiles + other.tiles,
            self.fp32_retries + other.fp32_retries,
            self.oom_retries + other.oom_retries,
            min(self.tile_px, other.tile_px),
            min(self.tile_batch, other.tile_batch),
        )

    def stats(self) -> dict[str, int]:
        return {
            "tiles": self.tiles,
            "fp32_retries": self.fp32_retries,
            "oom_retries": self.oom_retries,
            "tile_size": self.tile_px,
            "tile_batch": self.tile_batch,
        }


@dataclass(frozen=True)
class VaeSize:
    """What out-of-memory back-off shrinks in a VAE pass: the tile (pixels) and the tiles per call."""

    tile_px: int
    batch: int

    def __str__(self) -> str:
        return f"{self.tile_px}-pixel VAE tiles, {self.batch} per call"


def _smaller(size: VaeSize, factor: int) -> VaeSize | None:
    """Halve the batch, then the tile (down to :data:`MIN_VAE_TILE_PX`)."""
    if size.batch > 1:
        return VaeSize(size.tile_px, size.batch // 2)
    half = size.tile_px // 2 // factor * factor
    return VaeSize(half, 1) if half >= MIN_VAE_TILE_PX else None


def _flag_finite(raw: torch.Tensor, guard: bool, flags: list[torch.Tensor]) -> torch.Tensor | None:
    """Append the per-tile "all finite" flags ``[T]`` (device bools) of a model output ``[T, …]`` to
    ``flags`` and return them (None without ``guard``, i.e. in fp32). No host synchronisation."""
    if not guard:
        return None
    ok = torch.isfinite(raw).flatten(1).all(1)
    flags.append(ok)
    return ok


def _finite_or_zero(raw: torch.Tensor, values: torch.Tensor, guard: bool, flags: list[torch.Tensor]) -> torch.Tensor:
    """``values`` ``[T, …]`` with the rows of tiles whose model output ``raw`` ``[T, …]`` is not all finite
    set to zero (so they add nothing to the canvas); the per-tile flags ``[T]`` (device bools) are appended
    to ``flags``. No host synchronisation. Without ``guard`` (fp32) ``values`` are returned as they are."""
    ok = _flag_finite(raw, guard, flags)
    if ok is None:
        return values
    return torch.where(ok.view(-1, *([1] * (values.dim() - 1))), values, 0.0)


def _failed(flags: list[torch.Tensor]) -> list[int]:
    """Indices of tiles whose flag is False: one device→host read for the whole pass."""
    if not flags:
        return []
    ok = torch.cat(flags)
    if ok.is_meta:  # a dry run on the meta device carries no values
        return []
    return [i for i, good in enumerate(ok.tolist()) if not good]


@torch.inference_mode()
def encode_tiled(
    vae: torch.nn.Module,
    pixels: torch.Tensor,
    *,
    tile_px: int,
    device: torch.device,
    dtype: torch.dtype,
    tile_batch: int = 1,
    placement: CanvasPlacement | None = None,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, VaeTileStats]:
    """Encode ``pixels`` ``[1, 3, H, W]`` ([0, 1], on the placement's canvas device) to scaled latents
    ``[1, C, H/f, W/f]`` (fp32, on ``device``), ``tile_batch`` tiles per call.

    Uses the posterior mean (deterministic). Tiles are blended in latent space.
    """
    placement = placement or CanvasPlacement.device_path(device)
    factor = vae_scale_factor(vae)
    unit = pixels * 2.0 - 1.0  # the VAE's input range, once for the whole image
    (latent, info), size, retries = retry_on_oom(
        lambda size: _encode(vae, unit, size, factor, placement, dtype, progress),
        VaeSize(tile_px, tile_batch),
        lambda size: _smaller(size, factor),
        device=device,
        stage="VAE encode",
        hint="free GPU memory or use --vae-tile-size 128",
    )
    info.oom_retries, info.tile_px, info.tile_batch = retries, size.tile_px, size.batch
    return latent, info


def _encode(
    vae: torch.nn.Module,
    unit: torch.Tensor,
    size: VaeSize,
    factor: int,
    placement: CanvasPlacement,
    dtype: torch.dtype,
    progress: ProgressFn | None,
) -> tuple[torch.Tensor, VaeTileStats]:
    height, width = unit.shape[-2:]
    plan = latent_plan(height // factor, width // factor, size.tile_px, factor)
    blender = TileBlender(plan, device=placement.compute, dtype=torch.float32, gain=float(vae.config.scaling_factor))
    stack = TileStack(blender, int(vae.config.latent_channels))
    guard = dtype != torch.float32
    flags: list[torch.Tensor] = []

    def encode(tiles: tuple[Tile, ...], as_dtype: torch.dtype) -> torch.Tensor:
        x = torch.cat([unit[..., t.y0 * factor : t.y1 * factor, t.x0 * factor : t.x1 * factor] for t in tiles])
        return vae.encode(placement.to_compute(x).to(as_dtype)).latent_dist.mean

    tiles = list(plan)
    done = 0
    for batch in plan.batches(size.batch):
        latent = encode(batch, dtype)
        _flag_finite(latent, guard, flags)
        stack.put(batch, latent)  # a bad tile's row is overwritten by its fp32 retry below
        done += len(batch)
        if progress is not None:
            progress(done, len(tiles))
    failed = _failed(flags)
    for index in failed:
        logger.info("VAE encode produced NaN/Inf in %s for a tile; retrying it in fp32", dtype)
        with _upcast(vae):
            stack.put((tiles[index],), encode((tiles[index],), torch.float32))
    return stack.blend(), VaeTileStats(tiles=len(tiles), fp32_retries=len(failed))


@torch.inference_mode()
def decode_tiled(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    *,
    tile_px: int,
    dtype: torch.dtype,
    tile_batch: int = 1,
    placement: CanvasPlacement | None = None,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, VaeTileStats]:
    """Decode scaled latents ``[1, C, h, w]`` (compute device) to pixels ``[1, 3, f·h, f·w]`` float32 in
    [0, 1] on the placement's canvas device (default: the latents' device), ``tile_batch`` tiles per call."""
    placement = placement or CanvasPlacement.device_path(latents.device)
    factor = vae_scale_factor(vae)
    unscaled = latents / float(vae.config.scaling_factor)  # once for the whole latent
    (image, info), size, retries = retry_on_oom(
        lambda size: _decode(vae, unscaled, size, factor, placement, dtype, progress),
        VaeSize(tile_px, tile_batch),
        lambda size: _smaller(size, factor),
        device=placement.compute,
        stage="VAE decode",
        hint="free GPU memory or use --vae-tile-size 128",
    )
    info.oom_retries, info.tile_px, info.tile_batch = retries, size.tile_px, size.batch
    return image, info


def _decode(
    vae: torch.nn.Module,
    unscaled: torch.Tensor,
    size: VaeSize,
    factor: int,
    placement: CanvasPlacement,
    dtype: torch.dtype,
    progress: ProgressFn | None,
) -> tuple[torch.Tensor, VaeTileStats]:
    h, w = unscaled.shape[-2:]
    plan = latent_plan(h, w, size.tile_px, factor)
    pixel_tile = {tile: tile.scaled(factor) for tile in plan}
    accumulator = TileAccumulator(plan.scaled(factor), (1, 3), placement)
    guard = dtype != torch.float32
    flags: list[torch.Tensor] = []

    def decode(tiles: tuple[Tile, ...], as_dtype: torch.dtype) -> torch.Tensor:
        z = torch.cat([unscaled[..., t.y0 : t.y1, t.x0 : t.x1] for t in tiles])
        return vae.decode(z.to(as_dtype)).sample

    tiles = list(plan)
    done = 0
    for batch in plan.batches(size.batch):
        out = decode(batch, dtype)
        accumulator.add_batch([pixel_tile[t] for t in batch], _finite_or_zero(out, _to_unit(out), guard, flags))
        done += len(batch)
        if progress is not None:
            progress(done, len(tiles))
    failed = _failed(flags)
    for index in failed:
        logger.info("VAE decode produced NaN/Inf in %s for a tile; retrying it in fp32", dtype)
        with _upcast(vae):
            accumulator.add(pixel_tile[tiles[index]], _to_unit(decode((tiles[index],), torch.float32)))
    return accumulator.finish(), VaeTileStats(tiles=len(tiles), fp32_retries=len(failed))


def _to_unit(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] → float32 pixels in [0, 1]."""
    return ((decoded.float() + 1.0) * 0.5).clamp_(0.0, 1.0)


@contextmanager
def _upcast(vae: torch.nn.Module) -> Iterator[None]:
    """The VAE in fp32 inside the block, back in its own dtype after."""
    original = next(vae.parameters()).dtype
    vae.to(torch.float32)
    try:
        yield
    finally:
        vae.to(original)
