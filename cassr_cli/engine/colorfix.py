"""Colour correction of the diffusion output against the reference (DESIGN §2, stage 2 item 6).

* ``wavelet`` (default): low frequencies from the reference, high frequencies from the diffusion output,
  split with a 5-level à-trous wavelet (dilated 3×3 binomial blur, as StableSR's wavelet fix). Removes
  colour drift without touching generated detail.
* ``adain``: per-channel mean and standard deviation of the output matched to the reference.
* ``none``.

Images are ``[1, 3, H, W]`` float32 in [0, 1] (any device); results are clamped to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WAVELET_LEVELS = 5


def wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """3×3 binomial blur with dilation ``radius`` and replicate padding, per channel.

    The kernel ``[1, 2, 1]ᵀ[1, 2, 1] / 16`` is separable, so it runs as two shifted-slice sums (in place):
    the same result as the dilated depthwise ``conv2d`` (up to float rounding) without PyTorch's slow
    dilated-conv path on the CPU, where the image canvases live (docs/benchmarks.md).
    """
    height, width = image.shape[-2:]
    r = radius
    padded = F.pad(image, (r, r, r, r), mode="replicate")
    rows = padded[..., :height, :] + padded[..., 2 * r : 2 * r + height, :]
    rows.add_(padded[..., r : r + height, :], alpha=2.0)
    del padded
    out = rows[..., :width] + rows[..., 2 * r : 2 * r + width]
    out.add_(rows[..., r : r + width], alpha=2.0)
    return out.mul_(1.0 / 16.0)


def wavelet_low(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """``image`` blurred ``levels`` times (dilations 1, 2, 4 …): the low-frequency part."""
    low = image
    for level in range(levels):
        low = wavelet_blur(low, 2**level)
    return low


def wavelet_split(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(high, low)`` with ``high + low == image``; ``low`` is blurred ``levels`` times."""
    low = wavelet_low(image, levels)
    return image - low, low


def wavelet_color_fix(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``output`` plus low frequencies of ``reference``.

    The blur (replicate padding included) is linear, so ``high(out) + low(ref) = out + low(ref − out)``:
    one low-pass chain instead of two (same result up to float rounding; half the full-size passes).
    """
    return wavelet_low(reference - output).add_(output).clamp_(0.0, 1.0)


def adain_color_fix(output: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match each channel's mean and standard deviation of ``output`` to ``reference``."""
    o_mean, o_std = output.mean(dim=(2, 3), keepdim=True), output.std(dim=(2, 3), keepdim=True)
    r_mean, r_std = reference.mean(dim=(2, 3), keepdim=True), reference.std(dim=(2, 3), keepdim=True)
    return ((output - o_mean) / (o_std + eps) * r_std + r_mean).clamp_(0.0, 1.0)


def color_fix(output: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Apply the named colour fix (``wavelet``, ``adain`` or ``none``)."""
    if output.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(output.shape)} vs {tuple(reference.shape)}")
    if method == "wavelet":
        return wavelet_color_fix(output, reference)
    if method == "adain":
        return adain_color_fix(output, reference)
    if method == "none":
        return output
    raise ValueError(f"unknown colour fix {method!r}")
