"""How many tiles go through a model in one call: the user's number, or *auto* (``0``) sized from device memory.

Every model call costs the host a few kernel launches around it (cut the batch, cast, copy the output to
its canvas); with four diffusion tiles per call a 512² → 2048² image takes 42 UNet calls and 39 VAE calls,
so on a large GPU the host, not the device, sets the pace. *Auto* puts as many tiles in one call as fit
:data:`BATCH_MEMORY_FRACTION` of the device memory free when the stage starts, by the per-tile working
memory estimates below, spread evenly over the calls (25 tiles that fit 16 at a time go as 13 + 12, not
16 + 9). Off CUDA, where there is no free-memory figure and a larger batch buys nothing, auto is the
stage's fixed fallback (4 diffusion tiles, 2 VAE tiles, 4 stage-1 tiles: the values before auto existed).

The estimates are deliberate upper bounds of one tile's working memory in inference (activations, not
weights). ``python -m benchmarks.tile_memory`` measures them on the CPU in fp32 with the real-size models:
one more tile in a call added 263 MiB for a UNet row at a 64² latent, 644 and 595 MiB for a 512² VAE
encode and decode tile, and 1,434 MiB for a 192² RealESRGAN_x4plus tile; the estimates are 2.9×, 4.8×,
5.2× and 3.2× those. CUDA's kernels are not the CPU's, so an estimate that is still too small costs one
out-of-memory retry at half the batch (:func:`~cassr_cli.engine.oom.retry_on_oom`), not a failed image;
``benchmarks/gpu_check.sh`` reports each stage's device peak next to its batch.
"""

from __future__ import annotations

import math

import torch

AUTO = 0
"""The tile-batch value that means "size it from free device memory"."""
BATCH_MEMORY_FRACTION = 0.5
"""Share of the free device memory one stage's tile batch may plan to use."""
MAX_AUTO_BATCH = 64
"""The largest batch auto chooses (the largest a user may ask for, too)."""
DIFFUSION_FALLBACK, VAE_FALLBACK, ACTIVATION_FALLBACK = 4, 2, 4
"""Auto's batches without a free-memory figure (off CUDA): diffusion tiles, VAE tiles, stage-1 tiles."""

UNET_ELEMENTS_PER_LATENT_PIXEL = 48 * 1024
"""Working memory of one UNet row, in elements of the compute dtype per latent pixel: 384 MiB in fp16 for a
64² latent tile (measured: 263 MiB per extra row in fp32 with stock attention; cassr's guidance streams add
their K/V to every attn1 layer)."""
VAE_ELEMENTS_PER_PIXEL = 3 * 1024
"""Working memory of one VAE encode or decode tile, in elements per *image* pixel: 1.5 GiB in fp16 for a 512²
tile (measured: about 600 MiB per extra tile in fp32)."""
ACTIVATION_ELEMENTS_PER_OUTPUT_PIXEL = 2 * 1024
"""Working memory of one stage-1 tile, in elements per *output* pixel: 2.3 GiB in fp16 for a 192² input tile at
×4 (measured for RealESRGAN_x4plus: 1.4 GiB per extra tile in fp32; RRDB-class networks peak in their
up-sampling layers at the output size; transformer SR networks (SwinIR, HAT) are heavier per pixel and
may meet one out-of-memory retry)."""


def unet_tile_bytes(latent_pixels: int, rows_per_tile: int, dtype: torch.dtype) -> int:
    """Working bytes of one diffusion tile of ``latent_pixels`` (height × width of its latent) carrying
    ``rows_per_tile`` UNet rows (CFG copies, per-step guidance rows) in ``dtype``."""
    return latent_pixels * rows_per_tile * UNET_ELEMENTS_PER_LATENT_PIXEL * _itemsize(dtype)


def vae_tile_bytes(pixels: int, dtype: torch.dtype) -> int:
    """Working bytes of one VAE tile of ``pixels`` image pixels (encode or decode) in ``dtype``."""
    return pixels * VAE_ELEMENTS_PER_PIXEL * _itemsize(dtype)


def activation_tile_bytes(output_pixels: int, dtype: torch.dtype) -> int:
    """Working bytes of one stage-1 tile whose output has ``output_pixels`` pixels, in ``dtype``."""
    return output_pixels * ACTIVATION_ELEMENTS_PER_OUTPUT_PIXEL * _itemsize(dtype)


def resolve_tile_batch(
    requested: int, *, tiles: int, tile_bytes: int, free_bytes: int | None, fallback: int, workers: int = 1
) -> int:
    """Tiles per model call.

    Args:
        requested: the user's batch (≥ 1, used as given), or :data:`AUTO`.
        tiles: how many tiles the stage's plan has.
        tile_bytes: working bytes of one tile (the ``*_tile_bytes`` estimates).
        free_bytes: device memory free for this stage, or None when unknown (off CUDA): auto is then
            ``fallback``.
        fallback: the batch auto means without a free-memory figure.
        workers: devices the batches are spread over; auto gives each at least one batch.

    Returns:
        A batch of at least 1 (auto: at most ``tiles``, balanced so the calls are as even as they can be).
    """
    if requested != AUTO:
        return requested
    if free_bytes is None:
        return max(1, min(fallback, tiles))
    fits = int(BATCH_MEMORY_FRACTION * max(free_bytes, 0) // max(tile_bytes, 1))
    largest = max(1, min(fits, MAX_AUTO_BATCH, math.ceil(tiles / max(workers, 1))))
    calls = math.ceil(tiles / largest)
    return max(1, math.ceil(tiles / calls))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
