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
    torch.manual_seed(0)
    model = build_tiny_unet().eval()
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


def _passes(bank, slot):
    view = bank.view(slot, CPU)
    return {
        "write": (WritePass(view, STREAMS, 2), 4),
        "read": (ReadPass(bank.view(slot, CPU), STREAMS, 2, (0.3, 0.0), cfg=2), 4),
    }


@pytest.mark.parametrize("bank_kind", ["tile", "canvas"])
def test_guidance_passes_do_not_break_the_unet_graph(unet, bank_kind):
    tiles = (Tile(0, 16, 0, 16), Tile(0, 16, 16, 32))
    bank = TileBank() if bank_kind == "tile" else CanvasBank(16, 32, multiple=8)
    slot = BankSlot(0, tiles)
    cases = {"joint": (JointPass(ScratchBank().view(slot, CPU), STREAMS, 2, (0.0, -0.5)), 2 + 4), **_passes(bank, slot)}
    with torch.no_grad():
        for name in ("joint", "write", "read"):  # the write fills the bank the read needs
            ctx, rows = cases[name]
            explained = torch._dynamo.explain(unet)(
                torch.randn(rows, 4, 16, 16), torch.tensor(300),
                encoder_hidden_states=torch.randn(rows, 77, TEXT_HIDDEN), cross_attention_kwargs={"guidance": ctx},
            )
            assert explained.graph_break_count == 0, (name, [str(r.reason) for r in explained.break_reasons])
            assert explained.graph_count == 1, name


def test_one_compilation_per_layout_not_per_tile_batch(unet):
    """Five tile batches over three steps of cached guidance: one graph for the write pass and one for the
    read pass, whatever the batch (the bank views resolve the batch outside the graph)."""
    counter = CompileCounter()
    compiled = torch.compile(unet, backend=counter, dynamic=False)
    bank = TileBank()
    torch._dynamo.reset()
    with torch.no_grad():
        for step in range(3):
            for index in range(5):
                slot = BankSlot(index)
                if step == 0:
                    _call(compiled, 4, WritePass(bank.view(slot, CPU), STREAMS, 2), seed=index)
                _call(compiled, 2, ReadPass(bank.view(slot, CPU), STREAMS, 2, (0.0, 0.0)), seed=10 + index)
    assert counter.frame_count == 2


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
