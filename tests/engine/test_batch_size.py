"""Auto tile batches (``--tile-batch 0`` and its VAE / stage-1 siblings): sized from free device memory."""

from __future__ import annotations

import math

import pytest
import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.batch_size import (
    AUTO,
    activation_tile_bytes,
    resolve_tile_batch,
    unet_tile_bytes,
    vae_tile_bytes,
)
from cassr_cli.engine.pipeline import CassrPipeline
from cassr_cli.runtime.device import Runtime

GIB = 2**30
CPU = torch.device("cpu")


# --- the rule -------------------------------------------------------------------------------------------


def test_a_number_is_used_as_given():
    assert resolve_tile_batch(3, tiles=25, tile_bytes=GIB, free_bytes=1000 * GIB, fallback=4) == 3
    assert resolve_tile_batch(7, tiles=25, tile_bytes=GIB, free_bytes=None, fallback=4) == 7


def test_without_a_memory_figure_auto_is_the_fallback_but_never_more_than_the_tiles():
    assert resolve_tile_batch(AUTO, tiles=25, tile_bytes=GIB, free_bytes=None, fallback=4) == 4
    assert resolve_tile_batch(AUTO, tiles=2, tile_bytes=GIB, free_bytes=None, fallback=4) == 2


@pytest.mark.parametrize(
    ("free_gib", "tiles", "workers", "expected"),
    [
        (100, 25, 1, 25),  # half of 100 GiB holds 50 tiles of 1 GiB: all 25 in one call
        (32, 25, 1, 13),  # 16 fit: two calls, 13 + 12 rather than 16 + 9
        (8, 25, 1, 4),  # 4 fit: seven calls of 4, 4, 4, 4, 4, 4, 1 → the same seven calls of at most 4
        (1, 25, 1, 1),  # not even one fits by the estimate: one at a time (out-of-memory back-off is below)
        (0, 25, 1, 1),
        (100, 25, 2, 13),  # two devices: every device gets a batch
        (1000, 200, 1, 50),  # at most 64 per call: 200 tiles go as four calls of 50
    ],
)
def test_auto_fills_half_the_free_memory_in_even_calls(free_gib, tiles, workers, expected):
    got = resolve_tile_batch(AUTO, tiles=tiles, tile_bytes=GIB, free_bytes=free_gib * GIB, fallback=4, workers=workers)
    assert got == expected


def test_per_tile_estimates():
    # 384 MiB per UNet row of a 64² latent tile in fp16, 1.5 GiB per 512² VAE tile, 2 Ki elements per stage-1
    # output pixel; twice that in fp32; rows multiply.
    assert unet_tile_bytes(64 * 64, 1, torch.float16) == 384 * 2**20
    assert unet_tile_bytes(64 * 64, 3, torch.float32) == 3 * 768 * 2**20
    assert vae_tile_bytes(512 * 512, torch.float16) == 1.5 * GIB
    assert activation_tile_bytes(768 * 768, torch.float16) == 768 * 768 * 4096


# --- the stages -----------------------------------------------------------------------------------------

SMALL = dict(
    steps=2,
    guidance_mode="per-step",
    tile_size=128,
    tile_overlap=32,
    vae_tile_size=128,
    activation_tile_size=32,
    activation_tile_overlap=8,
)
IMAGE = torch.rand(1, 3, 64, 72, generator=torch.Generator().manual_seed(1))
OUT = (256, 288)


def _run(tiny_weights, free_memory: int | None, **changes):
    config = UpscaleConfig(weights_dir=str(tiny_weights), **{**SMALL, **changes})
    pipeline = CassrPipeline.from_config(config, Runtime(CPU, torch.float32, free_memory=free_memory))
    return pipeline(IMAGE, out_size=OUT, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def fixed(tiny_weights):
    """The batches auto meant before it existed, set by hand."""
    return _run(tiny_weights, None, tile_batch=4, vae_tile_batch=2, activation_tile_batch=4)


def test_off_cuda_auto_is_the_old_fixed_batches_bit_for_bit(tiny_weights, fixed):
    auto = _run(tiny_weights, None)
    assert torch.equal(auto.image, fixed.image)
    assert auto.stats["denoise"]["tile_batch"] == 4
    assert auto.stats["encode"]["tile_batch"] == auto.stats["decode"]["tile_batch"] == 2
    assert auto.stats["activation"]["tile_batch"] == 4


def test_with_memory_to_spare_every_stage_takes_all_its_tiles_in_one_call(tiny_weights, fixed):
    auto = _run(tiny_weights, 1000 * GIB)
    denoise = auto.stats["denoise"]
    assert denoise["tiles"] > 4  # more than the fixed batch, so this is a real difference
    assert denoise["tile_batch"] == denoise["tiles"]
    assert denoise["unet_calls"] == denoise["steps"]  # per-step guidance: one call per step
    for stage in ("encode", "decode"):
        tiles = auto.stats[stage]["tiles"] // (2 if stage == "encode" else 1)  # encode: the LR and the reference
        assert auto.stats[stage]["tile_batch"] == tiles > 2, stage
    assert auto.stats["activation"]["tile_batch"] == auto.stats["activation"]["tiles"] > 4
    assert (auto.image - fixed.image).abs().max() < 1e-4  # batching changes rounding only


def test_the_diffusion_batch_counts_a_tiles_rows(tiny_weights):
    """Per-step guidance gives a tile three UNet rows (main, LR, reference), with CFG four: free memory for
    exactly two such tiles (at half the free memory) gives batches of two."""
    probe = _run(tiny_weights, None).stats["denoise"]
    th, tw = probe["latent_tile"]
    tiles = probe["tiles"]
    for cfg, rows in ((1.0, 3), (2.0, 4)):
        per_tile = th * tw * rows * 48 * 1024 * 4  # fp32 elements → bytes
        got = _run(tiny_weights, 2 * 2 * per_tile, guidance_scale=cfg).stats["denoise"]
        assert got["tile_batch"] == math.ceil(tiles / math.ceil(tiles / 2)) == 2, cfg


def test_kept_guidance_comes_out_of_the_memory_first(tiny_weights):
    """Cached guidance keeps every tile's K/V on the device for the whole run: auto sizes the batch from
    what is left (the kept bytes are the bank's measured size, not the engine's estimate)."""
    probe = _run(tiny_weights, None, guidance_mode="cached").stats["denoise"]
    kept = probe["guidance_cache_bytes"]
    th, tw = probe["latent_tile"]
    per_tile = th * tw * 2 * 48 * 1024 * 4  # the guidance pass: two rows (LR, reference) per tile, fp32
    assert kept > 0
    assert _run(tiny_weights, kept + 4 * per_tile, guidance_mode="cached").stats["denoise"]["tile_batch"] == 2
    assert _run(tiny_weights, kept + 4 * per_tile - 1, guidance_mode="cached").stats["denoise"]["tile_batch"] == 1
