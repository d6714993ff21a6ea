"""``--compile``: the guidance state never breaks the UNet's graph nor forces a compilation per tile batch;
compiled equals eager (inductor on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from cassr_cli.engine.attention import install_processors, restore_processors
from cassr_cli.engine.guidance import (
    BankSlot,
    CanvasBank,
    JointPass,
    ReadPass,
    ScratchBank,
    TileBank,
    WritePass,
)
from cassr_cli.models.adapter import MultiAttentionAdapter
from cassr_cli.testing.tiny_weights import TEXT_HIDDEN, build_tiny_unet
from cassr_cli.tiling.plan import Tile

CPU = torch.device("cpu")
STREAMS = ("lr", "ref")


@pytest.fixture(scope="module")
def unet():
    """A shallow tiny UNet (three levels: fewer modules to trace) with a trained-looking adapter."""
    torch.manual_seed(0)
    model = build_tiny_unet(levels=3).eval()
    adapter = MultiAttentionAdapter.for_unet(model, rank=2)
    for p in adapter.parameters():
        p.data.normal_(0, 0.2)
    previous = install_processors(model, adapter)
    yield model
    restore_processors(model, previous)


def _call(unet, rows: int, ctx, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, 16, 16, generator=g)
    emb = torch.randn(rows, 77, TEXT_HIDDEN, generator=g)
    return unet(x, torch.tensor(300), encoder_hidden_states=emb, cross_attention_kwargs={"guidance": ctx}).sample


def test_guidance_state_never_breaks_the_graph_nor_recompiles_per_tile_batch(unet):
    """``fullgraph=True`` fails on any graph break. Per-step (joint pass, scratch bank), cached (write then
    read, tile bank) and shifted tiles (write then read, canvas bank) over several tile batches and steps:
    one graph per pass layout, none per batch — the bank views resolve the batch outside the graph."""
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(unet, backend=counter, dynamic=False, fullgraph=True)
    tile_bank, canvas_bank = TileBank(), CanvasBank(16, 48, multiple=4)
    with torch.no_grad():
        for step in range(2):
            for index in range(3):
                tiles = (Tile(0, 16, 16 * index, 16 * index + 16),)
                shift = (0, 4 * step)  # the canvas bank's tiles move between steps
                scratch = ScratchBank().view(BankSlot(index), CPU)
                _call(compiled, 3, JointPass(scratch, STREAMS, 1, (0.0, -0.5)), seed=index)
                for bank, slot in ((tile_bank, BankSlot(index)), (canvas_bank, BankSlot(index, tiles, shift))):
                    if step == 0:
                        _call(compiled, 2, WritePass(bank.view(slot, CPU), STREAMS, 1), seed=10 + index)
                    _call(compiled, 2, ReadPass(bank.view(slot, CPU), STREAMS, 1, (0.3, 0.0), cfg=2), seed=20 + index)
        # joint; write and read with the tile bank; read with the canvas bank; its write twice (the first
        # write of a layer allocates the canvas, later ones add to it)
        assert counter.frame_count == 6
        for index in range(3, 6):  # more tile batches, another step: nothing new to compile
            slot = BankSlot(index)
            _call(compiled, 2, WritePass(tile_bank.view(slot, CPU), STREAMS, 1), seed=index)
            _call(compiled, 2, ReadPass(tile_bank.view(slot, CPU), STREAMS, 1, (0.3, 0.0), cfg=2), seed=index)
            _call(compiled, 3, JointPass(ScratchBank().view(slot, CPU), STREAMS, 1, (0.0, -0.5)), seed=index)
    assert counter.frame_count == 6


def _devices() -> list:
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.slow  # inductor compiles C++ (CPU) or Triton (CUDA) kernels: minutes on a small machine
@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("mode", ["per-step", "cached"])
def test_compiled_pipeline_equals_eager(tiny_weights, device, mode):
    """``--compile`` (UNet, VAE, activation; inductor, channels-last, CUDA graphs where they apply) gives the
    eager result, per-step and with a kept guidance bank."""
    from cassr_cli.config import UpscaleConfig
    from cassr_cli.engine.pipeline import CassrPipeline

    settings = dict(
        weights_dir=str(tiny_weights), device=device, dtype="fp32", steps=2, guidance_mode=mode, tile_size=128,
        tile_overlap=64, vae_tile_size=64, activation_tile_size=32, activation_tile_overlap=8,
    )
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))

    def run(compile_: bool, images: int) -> list[torch.Tensor]:
        torch._dynamo.reset()
        pipeline = CassrPipeline.from_config(UpscaleConfig(compile=compile_, **settings))
        try:
            return [pipeline(image, out_size=(192, 256), generator=torch.Generator().manual_seed(1)).image for _ in range(images)]
        finally:
            pipeline.close()

    (eager,) = run(False, 1)
    for compiled in run(True, 2):  # the first image compiles, the second replays what was compiled
        assert (compiled - eager).abs().max() < 2e-3
