"""Colour fix: wavelet keeps detail from the output and colour from the reference; AdaIN matches moments."""

from __future__ import annotations

import pytest
import torch

from cassr_cli.engine.colorfix import adain_color_fix, color_fix, wavelet_split


def _scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    reference = torch.stack([0.3 + 0.4 * xx, 0.5 * yy + 0.2, 0.6 - 0.3 * xx])[None]
    detail = 0.05 * torch.sign(torch.sin(xx * 200))[None, None].expand(1, 3, -1, -1)  # fine stripes
    shifted = reference * 0.8 + 0.15 + detail + 0.002 * torch.randn(1, 3, 128, 128, generator=gen)
    return reference, shifted, detail


def test_wavelet_split_is_exact():
    _, shifted, _ = _scene()
    high, low = wavelet_split(shifted)
    assert torch.allclose(high + low, shifted, atol=1e-6)


def test_wavelet_fix_takes_colour_from_reference_and_detail_from_output():
    reference, shifted, detail = _scene()
    fixed = color_fix(shifted, reference, "wavelet")
    inner = (..., slice(16, -16), slice(16, -16))
    # colour: the per-channel means return to the reference's (the output's were shifted by ~0.1)
    assert (shifted[inner].mean((2, 3)) - reference[inner].mean((2, 3))).abs().max() > 0.05
    assert (fixed[inner].mean((2, 3)) - reference[inner].mean((2, 3))).abs().max() < 0.01
    # detail: the stripes survive (correlation of the high band with the injected detail)
    high, _ = wavelet_split(fixed)
    corr = torch.corrcoef(torch.stack([high[inner].flatten(), detail[inner].flatten()]))[0, 1]
    assert corr > 0.9


def test_adain_matches_channel_statistics():
    reference, shifted, _ = _scene()
    fixed = adain_color_fix(shifted, reference)
    assert torch.allclose(fixed.mean((2, 3)), reference.mean((2, 3)), atol=2e-3)
    assert torch.allclose(fixed.std((2, 3)), reference.std((2, 3)), atol=5e-3)


def test_none_is_identity_and_bad_input_raises():
    reference, shifted, _ = _scene()
    assert torch.equal(color_fix(shifted, reference, "none"), shifted)
    with pytest.raises(ValueError):
        color_fix(shifted, reference[..., :64], "wavelet")
    with pytest.raises(ValueError):
        color_fix(shifted, reference, "sepia")
