"""Real-size architectures with random weights (opt-in: CASSR_RUN_SLOW=1; minutes on a CPU)."""

from __future__ import annotations

import pytest
import torch

from cassr_cli.engine.attention import MultiAttentionProcessor, install_processors
from cassr_cli.engine.guidance import BankSlot, JointPass, ScratchBank
from cassr_cli.models.adapter import MultiAttentionAdapter
from cassr_cli.testing.architectures import SD21_TEXT_HIDDEN, sd21_base_unet

pytestmark = pytest.mark.slow


def test_sd21_base_unet_forward_with_multi_attention_and_adapter():
    """One SD 2.1-base UNet forward at a 64² latent (512 px tile) with both guidance streams batched in."""
    dtype = torch.bfloat16
    unet = sd21_base_unet(dtype=dtype).eval()
    adapter = MultiAttentionAdapter.for_unet(unet, rank=16).to(dtype)
    install_processors(unet, adapter)
    assert sum(isinstance(p, MultiAttentionProcessor) for p in unet.attn_processors.values()) == 16
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 4, 64, 64, generator=gen).to(dtype)
    text = torch.randn(3, 77, SD21_TEXT_HIDDEN, generator=gen).to(dtype)
    ctx = JointPass(ScratchBank().view(BankSlot(0), torch.device("cpu")), ("lr", "ref"), 1, (0.0, 0.0))
    with torch.inference_mode():
        out = unet(rows, torch.tensor([500, 200, 200]), encoder_hidden_states=text, cross_attention_kwargs={"guidance": ctx}).sample
    assert out.shape == (3, 4, 64, 64)
    assert torch.isfinite(out.float()).all()
