"""The guidance bank in all its modes: scratch (per-step), per tile batch (cached, refreshed, training),
canvas (tiles that move between write and read), host offload; and the passes over each."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from cassr_cli.engine.attention import MultiAttentionProcessor
from cassr_cli.engine.guidance import (
    BankSlot,
    CanvasBank,
    JointPass,
    ReadPass,
    ScratchBank,
    TileBank,
    WritePass,
)
from cassr_cli.tiling.plan import Tile

CPU = torch.device("cpu")


def _kv(seed: int, shape=(2, 3, 2, 16, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_scratch_bank_keeps_nothing_between_calls():
    bank = ScratchBank()
    view = bank.view(BankSlot(0), CPU)
    k, v = _kv(0)
    view.write("layer", k, v)
    assert view.read("layer")[0] is k
    assert bank.nbytes() == 0
    with pytest.raises(KeyError):
        bank.view(BankSlot(0), CPU).read("layer")  # a new call starts empty


def test_tile_bank_keeps_each_batch_apart_until_released():
    bank = TileBank()
    a, b = _kv(1), _kv(2)
    bank.view(BankSlot(0), CPU).write("l", *a)
    bank.view(BankSlot(1), CPU).write("l", *b)
    assert torch.equal(bank.view(BankSlot(0), CPU).read("l")[0], a[0])
    assert torch.equal(bank.view(BankSlot(1), CPU).read("l")[1], b[1])
    assert bank.nbytes() == 2 * 2 * a[0].numel() * 4
    bank.release()
    assert bank.nbytes() == 0
    with pytest.raises(KeyError):
        bank.view(BankSlot(0), CPU).read("l")


def test_tile_bank_offload_returns_the_same_values():
    bank = TileBank(offload=True)
    k, v = _kv(3)
    bank.view(BankSlot(4), CPU).write("l", k, v)
    rk, rv = bank.view(BankSlot(4), CPU).read("l")
    assert torch.equal(rk, k) and torch.equal(rv, v)


def _position_tokens(tiles: list[Tile], f: int, latent_w: int, shift=(0, 0), h: int = 32) -> torch.Tensor:
    """K ``[1, T, 1, L, 1]`` whose token value is its latent position index ``y·w + x`` at token size ``f``
    (the value a canvas must hand back for that place, whichever tile wrote it)."""
    rows = []
    for t in tiles:
        ys = (torch.arange(t.y0, t.y1, f) + shift[0]) % h
        xs = (torch.arange(t.x0, t.x1, f) + shift[1]) % latent_w
        rows.append((ys[:, None] * latent_w + xs[None, :]).reshape(-1).float())
    return torch.stack(rows)[None, :, None, :, None]


@pytest.mark.parametrize("f", [1, 2, 8])
def test_canvas_bank_reads_shifted_tiles_from_what_other_tiles_wrote(f):
    """Written on an unshifted grid, read on a grid shifted (with wrap-around at the edges): every token
    read is the one written for that latent position, at every attention level."""
    h, w = 32, 48
    grid = [Tile(y, y + 16, x, x + 16) for y in (0, 16) for x in (0, 16, 32)]
    bank = CanvasBank(h, w, multiple=8)
    for index, tile in enumerate(grid):  # one tile per batch, as a tile batch of 1
        k = _position_tokens([tile], f, w)
        bank.view(BankSlot(index, (tile,), (0, 0)), CPU).write("layer", k, -k)
    shift = (8, 24)
    moved = [Tile(y, y + 16, x, x + 16) for y in (0, 16) for x in (0, 16, 32)]
    view = bank.view(BankSlot(0, tuple(moved), shift), CPU)
    k, v = view.read("layer")
    expected = _position_tokens(moved, f, w, shift)
    assert torch.equal(k, expected) and torch.equal(v, -expected)
    assert bank.nbytes() == 2 * (h // f) * (w // f) * 4


def test_canvas_bank_refuses_tiles_off_the_token_grid():
    bank = CanvasBank(32, 32, multiple=8)
    with pytest.raises(ValueError, match="not aligned"):
        bank.view(BankSlot(0, (Tile(4, 20, 0, 16),)), CPU)


def _layer() -> tuple[Attention, MultiAttentionProcessor]:
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    return attn, MultiAttentionProcessor("l", attn.scale)


def test_every_bank_gives_the_joint_result_through_write_and_read_passes():
    """Per-step (joint, scratch), cached (write then read through a tile bank) and shifted (write then read
    through a canvas bank, tiles unchanged) compute the same attention for the main rows."""
    attn, proc = _layer()
    g = torch.Generator().manual_seed(1)
    main, lr, ref = (torch.randn(2, 16, 16, generator=g) for _ in range(3))  # 2 tiles of 4×4 tokens
    weights = (0.2, -0.4)
    joint = proc(attn, torch.cat([main, lr, ref]), guidance=JointPass(ScratchBank().view(BankSlot(0), CPU), ("lr", "ref"), 2, weights))
    tiles = (Tile(0, 4, 0, 4), Tile(0, 4, 4, 8))
    for bank, slot in ((TileBank(), BankSlot(3)), (CanvasBank(8, 8, multiple=1), BankSlot(3, tiles))):
        proc(attn, torch.cat([lr, ref]), guidance=WritePass(bank.view(slot, CPU), ("lr", "ref"), 2))
        read = proc(attn, main, guidance=ReadPass(bank.view(slot, CPU), ("lr", "ref"), 2, weights))
        assert torch.allclose(read, joint[:2], atol=1e-6), type(bank).__name__
