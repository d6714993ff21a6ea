"""Tiled VAE encode and decode with blended overlaps.

Our own rather than diffusers' ``enable_tiling``: diffusers keeps the whole image and the output canvas
on the GPU (device memory then grows with the image) and cross-fades only the overlap with the tile
above and to the left. Here the pixel image and the decoded canvas stay on the CPU, one tile is on the
device at a time, and tiles use the engine's one blend window and plan (docs/decisions.md).

Shapes: pixels ``[1, 3, H, W]`` float32 in [0, 1] on the CPU; latents ``[1, 4, H/f, W/f]`` float32,
already multiplied by the VAE's scaling factor, on the compute device, where ``f`` is the VAE's
down-sampling factor (:func:`vae_scale_factor`: 8 for SD 1.x/2.x). ``H`` and ``W`` are multiples of ``f``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from cassr_cli.tiling.blend import TileBlender
from cassr_cli.tiling.plan import TilePlan, plan_tiles

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


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


@torch.inference_mode()
def encode_tiled(
    vae: torch.nn.Module,
    pixels: torch.Tensor,
    *,
    tile_px: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Encode ``pixels`` ``[1, 3, H, W]`` (CPU, [0, 1]) to scaled latents ``[1, C, H/f, W/f]`` (fp32, device).

    Uses the posterior mean (deterministic). Tiles are blended in latent space.
    """
    height, width = pixels.shape[-2:]
    factor = vae_scale_factor(vae)
    plan = latent_plan(height // factor, width // factor, tile_px, factor)
    blender = TileBlender(plan, device=device, dtype=torch.float32)
    channels = int(vae.config.latent_channels)
    canvas = blender.zeros((1, channels))
    scale = float(vae.config.scaling_factor)
    for index, tile in enumerate(plan):
        rows, cols = tile.scaled(factor).slices()
        x = pixels[..., rows, cols].to(device=device, dtype=dtype, non_blocking=True) * 2.0 - 1.0
        latent = vae.encode(x).latent_dist.mean
        blender.add(canvas, tile, latent[0].float() * scale)
        if progress is not None:
            progress(index + 1, len(plan))
    return canvas


@torch.inference_mode()
def decode_tiled(
    vae: torch.nn.Module,
    latents: torch.Tensor,
    *,
    tile_px: int,
    dtype: torch.dtype,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, int]:
    """Decode scaled latents ``[1, C, h, w]`` (device) to pixels ``[1, 3, f·h, f·w]`` float32 on the CPU.

    A tile whose half-precision decode is not finite is decoded again in fp32 (the VAE is upcast for
    that tile and cast back). Returns the image and how many tiles needed the fp32 retry.
    """
    h, w = latents.shape[-2:]
    factor = vae_scale_factor(vae)
    plan = latent_plan(h, w, tile_px, factor)
    pixel_plan = plan.scaled(factor)
    blender = TileBlender(pixel_plan, device="cpu", dtype=torch.float32, reuse=False)
    canvas = blender.zeros((1, 3))
    scale = float(vae.config.scaling_factor)
    retries = 0
    for index, (tile, pixel_tile) in enumerate(zip(plan, pixel_plan, strict=True)):
        rows, cols = tile.slices()
        z = latents[..., rows, cols] / scale
        out = vae.decode(z.to(dtype)).sample
        if dtype != torch.float32 and not bool(torch.isfinite(out).all()):
            retries += 1
            logger.info("VAE decode produced NaN/Inf in %s for a tile; retrying it in fp32", dtype)
            out = _decode_fp32(vae, z)
        pixels = ((out[0].float() + 1.0) * 0.5).clamp_(0.0, 1.0).cpu()
        blender.add(canvas, pixel_tile, pixels)
        if progress is not None:
            progress(index + 1, len(plan))
    return canvas, retries


def _decode_fp32(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    original = next(vae.parameters()).dtype
    vae.to(torch.float32)
    try:
        return vae.decode(z.float()).sample
    finally:
        vae.to(original)
