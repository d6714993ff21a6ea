"""Multi-attention processors: equivalences, bias without masks, installation on SD 2.1-base, adapters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from cassr_cli.engine.attention import (
    MultiAttentionProcessor,
    PassthroughProcessor,
    attend_with_stream_bias,
    install_processors,
    restore_processors,
)
from cassr_cli.engine.guidance import BankSlot, JointPass, ReadPass, ScratchBank, TileBank, WritePass
from cassr_cli.errors import ModelLoadError
from cassr_cli.models.adapter import MultiAttentionAdapter, self_attention_layers
from cassr_cli.testing.architectures import sd21_base_unet
from cassr_cli.testing.tiny_weights import build_tiny_unet


def _attention(dim: int = 16, heads: int = 2) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads).eval()


def test_without_guidance_equals_diffusers_default():
    attn = _attention()
    x = torch.randn(3, 10, 16)
    expected = AttnProcessor2_0()(attn, x)
    got = MultiAttentionProcessor("l", attn.scale)(attn, x)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("head_dim", [4, 8, 64])
def test_stream_bias_equals_explicit_additive_mask(head_dim):
    torch.manual_seed(1)
    q = torch.randn(2, 3, 7, head_dim)
    k = torch.randn(2, 3, 15, head_dim)
    v = torch.randn(2, 3, 15, head_dim)
    bias = torch.cat([torch.zeros(5), torch.full((5,), -0.7), torch.full((5,), 1.3)])
    scale = head_dim**-0.5
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(7, 15), scale=scale)
    got = attend_with_stream_bias(q, k, v, bias, scale, "sdpa")
    assert torch.allclose(got, expected, atol=1e-5)


def _batched_context(tiles: int, streams=("lr", "ref"), weights=(0.0, 0.0), cfg: int = 1) -> JointPass:
    view = ScratchBank().view(BankSlot(0), torch.device("cpu"))
    return JointPass(view, streams, tiles, weights, cfg)


def test_guidance_rows_run_the_plain_model_and_main_rows_see_them():
    attn = _attention()
    proc = MultiAttentionProcessor("l", attn.scale)
    main, lr, ref = (torch.randn(2, 10, 16) for _ in range(3))
    out = proc(attn, torch.cat([main, lr, ref]), guidance=_batched_context(2))
    plain = AttnProcessor2_0()
    assert torch.allclose(out[2:4], plain(attn, lr), atol=1e-6)
    assert torch.allclose(out[4:6], plain(attn, ref), atol=1e-6)
    # Main row 0 attends to [own; lr of tile 0; ref of tile 0]: recompute by hand.
    q = attn.to_q(main[:1]).view(1, 10, 2, 8).transpose(1, 2)
    kv_in = torch.cat([main[:1], lr[:1], ref[:1]], 1)
    k = attn.to_k(kv_in).view(1, 30, 2, 8).transpose(1, 2)
    v = attn.to_v(kv_in).view(1, 30, 2, 8).transpose(1, 2)
    manual = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 10, 16)
    manual = attn.to_out[0](manual)
    assert torch.allclose(out[:1], manual, atol=1e-5)
    assert not torch.allclose(out[:2], plain(attn, main), atol=1e-3)  # guidance changes the main rows


def test_write_then_read_equals_the_joint_pass():
    """What cached guidance does (a write pass, then read passes) equals per-step's joint call."""
    attn = _attention()
    proc = MultiAttentionProcessor("l", attn.scale)
    main, lr, ref = (torch.randn(2, 10, 16) for _ in range(3))
    joint = proc(attn, torch.cat([main, lr, ref]), guidance=_batched_context(2, weights=(0.3, -0.2)))
    bank = TileBank()
    view = bank.view(BankSlot(5), torch.device("cpu"))
    written = proc(attn, torch.cat([lr, ref]), guidance=WritePass(view, ("lr", "ref"), 2))
    assert torch.allclose(written, joint[2:], atol=1e-6)  # guidance rows are the plain model either way
    again = bank.view(BankSlot(5), torch.device("cpu"))  # a later step's view of the same batch
    cached = proc(attn, main, guidance=ReadPass(again, ("lr", "ref"), 2, (0.3, -0.2)))
    assert torch.allclose(cached, joint[:2], atol=1e-6)
    assert bank.nbytes() == 2 * 2 * 2 * 10 * 16 * 4  # K and V: 2 streams × 2 tiles × 10 tokens × 16 channels


def test_cfg_rows_share_their_tiles_guidance():
    attn = _attention()
    proc = MultiAttentionProcessor("l", attn.scale)
    main, lr, ref = (torch.randn(2, 10, 16) for _ in range(3))
    one = proc(attn, torch.cat([main, lr, ref]), guidance=_batched_context(2))
    two = proc(attn, torch.cat([main, main, lr, ref]), guidance=_batched_context(2, cfg=2))
    assert torch.allclose(two[:2], one[:2], atol=1e-6) and torch.allclose(two[2:4], one[:2], atol=1e-6)


def test_processors_land_on_every_attn1_of_sd21_base():
    unet = sd21_base_unet(device="meta")
    previous = install_processors(unet)
    procs = unet.attn_processors
    attn1 = [k for k in procs if k.endswith("attn1.processor")]
    assert len(attn1) == 16  # 2+2+2 down, 1 mid, 3+3+3 up transformer blocks
    assert all(isinstance(procs[k], MultiAttentionProcessor) for k in attn1)
    assert all(isinstance(p, PassthroughProcessor) for k, p in procs.items() if k not in attn1)
    restore_processors(unet, previous)
    assert not any(isinstance(p, (MultiAttentionProcessor, PassthroughProcessor)) for p in unet.attn_processors.values())


def test_one_real_size_attn1_layer_runs_with_guidance():
    unet = sd21_base_unet(device="meta")
    key, layer = next(iter(self_attention_layers(unet).items()))
    attn = Attention(query_dim=layer.query_dim, heads=layer.heads, dim_head=layer.query_dim // layer.heads)
    assert (attn.heads, attn.query_dim) == (5, 320)  # SD 2.1-base: 64-channel heads
    x = torch.randn(3, 64, 320)
    out = MultiAttentionProcessor(key, attn.scale)(attn, x, guidance=_batched_context(1, weights=(0.5, 0.0)))
    assert out.shape == x.shape and torch.isfinite(out).all()


def _unet_forward(unet, rows, adapter=None):
    previous = install_processors(unet, adapter)
    try:
        emb = torch.zeros(rows.shape[0], 77, 32)
        ctx = _batched_context(1)
        return unet(rows, torch.tensor(400), encoder_hidden_states=emb, cross_attention_kwargs={"guidance": ctx}).sample
    finally:
        restore_processors(unet, previous)


def test_zero_initialised_adapter_equals_no_adapter():
    torch.manual_seed(0)
    unet = build_tiny_unet().eval()
    rows = torch.randn(3, 4, 16, 16)
    adapter = MultiAttentionAdapter.for_unet(unet, rank=4)
    with torch.no_grad():
        without = _unet_forward(unet, rows)
        zero = _unet_forward(unet, rows, adapter)
        assert (zero - without).abs().max() < 1e-5
        for p in adapter.parameters():  # a trained adapter does change the result
            p.data.normal_(0, 0.5)
        trained = _unet_forward(unet, rows, adapter)
    assert (trained[:1] - without[:1]).abs().max() > 1e-3
    assert torch.allclose(trained[1:], without[1:], atol=1e-5)  # guidance rows stay the frozen model


def test_adapter_round_trip_and_mismatch(tmp_path):
    unet = build_tiny_unet()
    adapter = MultiAttentionAdapter.for_unet(unet, rank=2, base_model="tiny")
    for p in adapter.parameters():
        p.data.normal_()
    path = tmp_path / "adapter.safetensors"
    adapter.save(path, mode="cached", guidance_timestep=300)
    loaded, meta = MultiAttentionAdapter.load(path)
    assert meta["mode"] == "cached" and meta["guidance_timestep"] == "300" and meta["base_model"] == "tiny"
    original, restored = adapter.state_dict(), loaded.state_dict()
    assert list(original) == list(restored)
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    loaded.check_matches(unet)
    with pytest.raises(ModelLoadError, match="does not fit"):
        loaded.check_matches(sd21_base_unet(device="meta"))


def test_non_adapter_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelLoadError, match="not a cassr multi-attention adapter"):
        MultiAttentionAdapter.load(path)
