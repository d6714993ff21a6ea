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

from cassr_cli.engine.canvas import CanvasPlacement, TileAccumulator
from cassr_cli.engine.oom import retry_on_oom
from cassr_cli.tiling.blend import TileBlender
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


@dataclass
class VaeTileStats:
    """What one tiled encode or decode did (``--json`` stats)."""

    tiles: int = 0
    fp32_retries: int = 0
    oom_retries: int = 0
    tile_px: int = 0

    def merge(self, other: VaeTileStats) -> VaeTileStats:
        return VaeTileStats(
            self.tiles + other.tiles,
            self.fp32_retries + other.fp32_retries,
            self.oom_retries + other.oom_retries,
            min(self.tile_px, other.tile_px),
        )

    def stats(self) -> dict[str, int]:
        return {"tiles": self.tiles, "fp32_retries": self.fp32_retries, "oom_retries": self.oom_retries, "tile_size": self.tile_px}


def _half_tile(tile_px: int, factor: int) -> int | None:
    half = tile_px // 2 // factor * factor
    return half if half >= MIN_VAE_TILE_PX else None


def _finite_or_zero(
    raw: torch.Tensor, value: torch.Tensor, guard: bool, flags: list[torch.Tensor]
) -> torch.Tensor:
    """``value`` (what goes on the canvas) when all of the model output ``raw`` is finite, else zeros, so
    the tile adds nothing; the flag (a device bool) is appended to ``flags``. No host synchronisation.
    Without ``guard`` (fp32) ``value`` is returned as it is."""
    if not guard:
        return value
    ok = torch.isfinite(raw).all()
    flags.append(ok)
    return torch.where(ok, value, torch.zeros((), dtype=value.dtype, device=value.device))


def _failed(flags: list[torch.Tensor]) -> list[int]:
    """Indices of tiles whose flag is False: one device→host read for the whole pass."""
    if not flags:
        return []
    ok = torch.stack(flags)
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
    placement: CanvasPlacement | None = None,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, VaeTileStats]:
    """Encode ``pixels`` ``[1, 3, H, W]`` ([0, 1], on the placement's canvas device) to scaled latents
    ``[1, C, H/f, W/f]`` (fp32, on ``device``).

    Uses the posterior mean (deterministic). Tiles are blended in latent space.
    """
    placement = placement or CanvasPlacement.device_path(device)
    factor = vae_scale_factor(vae)

    def attempt(tile: int) -> tuple[torch.Tensor, VaeTileStats]:
        return _encode(vae, pixels, tile, factor, placement, dtype, progress)

    (latent, info), tile, retries = retry_on_oom(
        attempt,
        tile_px,
        lambda t: _half_tile(t, factor),
        device=device,
        stage="VAE encode",
        hint="free GPU memory or use --vae-tile-size 128",
        describe=lambda t: f"{t}-pixel VAE tiles",
    )
    info.oom_retries, info.tile_px = retries, tile
    return latent, info


def _encode(
    vae: torch.nn.Module,
    pixels: torch.Tensor,
    tile_px: int,
    factor: int,
    placement: CanvasPlacement,
    dtype: torch.dtype,
    progress: ProgressFn | None,
) -> tuple[torch.Tensor, VaeTileStats]:
    height, width = pixels.shape[-2:]
    plan = latent_plan(height // factor, width // factor, tile_px, factor)
    blender = TileBlender(plan, device=placement.compute, dtype=torch.float32)
    canvas = blender.zeros((1, int(vae.config.latent_channels)))
    scale = float(vae.config.scaling_factor)
    guard = dtype != torch.float32
    flags: list[torch.Tensor] = []

    def encode(tile: Tile, as_dtype: torch.dtype) -> torch.Tensor:
        rows, cols = tile.scaled(factor).slices()
        x = placement.to_compute(pixels[..., rows, cols]).to(as_dtype) * 2.0 - 1.0
        return vae.encode(x).latent_dist.mean[0].float() * scale

    tiles = list(plan)
    for index, tile in enumerate(tiles):
        latent = encode(tile, dtype)
        blender.add(canvas, tile, _finite_or_zero(latent, latent, guard, flags))
        if progress is not None:
            progress(index + 1, len(tiles))
    failed = _failed(flags)
    for index in failed:
        logger.info("VAE encode produced NaN/Inf in %s for a tile; retrying it in fp32", dtype)
        with _upcast(vae):
            blender.add(canvas, tiles[index], encode(tiles[index], torch.float32))
    return canvas, VaeTileStats(tiles=len(tiles), fp32_retries=len(failed))


@torch.inference_mode()
def decode_tiled(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    *,
    tile_px: int,
    dtype: torch.dtype,
    placement: CanvasPlacement | None = None,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, VaeTileStats]:
    """Decode scaled latents ``[1, C, h, w]`` (compute device) to pixels ``[1, 3, f·h, f·w]`` float32 in
    [0, 1] on the placement's canvas device (default: the latents' device)."""
    placement = placement or CanvasPlacement.device_path(latents.device)
    factor = vae_scale_factor(vae)
    (image, info), tile, retries = retry_on_oom(
        lambda tile: _decode(vae, latents, tile, factor, placement, dtype, progress),
        tile_px,
        lambda t: _half_tile(t, factor),
        device=placement.compute,
        stage="VAE decode",
        hint="free GPU memory or use --vae-tile-size 128",
        describe=lambda t: f"{t}-pixel VAE tiles",
    )
    info.oom_retries, info.tile_px = retries, tile
    return image, info


def _decode(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    tile_px: int,
    factor: int,
    placement: CanvasPlacement,
    dtype: torch.dtype,
    progress: ProgressFn | None,
) -> tuple[torch.Tensor, VaeTileStats]:
    h, w = latents.shape[-2:]
    plan = latent_plan(h, w, tile_px, factor)
    pixel_plan = plan.scaled(factor)
    accumulator = TileAccumulator(pixel_plan, (1, 3), placement)
    scale = float(vae.config.scaling_factor)
    guard = dtype != torch.float32
    flags: list[torch.Tensor] = []

    def decode(tile: Tile, as_dtype: torch.dtype) -> torch.Tensor:
        rows, cols = tile.slices()
        out = vae.decode((latents[..., rows, cols] / scale).to(as_dtype)).sample
        return out

    tiles = list(zip(plan, pixel_plan, strict=True))
    for index, (tile, pixel_tile) in enumerate(tiles):
        out = decode(tile, dtype)
        accumulator.add(pixel_tile, _finite_or_zero(out, _to_unit(out), guard, flags))
        if progress is not None:
            progress(index + 1, len(tiles))
    failed = _failed(flags)
    for index in failed:
        logger.info("VAE decode produced NaN/Inf in %s for a tile; retrying it in fp32", dtype)
        tile, pixel_tile = tiles[index]
        with _upcast(vae):
            accumulator.add(pixel_tile, _to_unit(decode(tile, torch.float32)))
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
