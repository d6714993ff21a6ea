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
_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """3×3 binomial blur with dilation ``radius`` and replicate padding, per channel."""
    channels = image.shape[1]
    kernel = _KERNEL.to(image.device, image.dtype).expand(channels, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_split(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(high, low)`` with ``high + low == image``; ``low`` is blurred ``levels`` times."""
    low = image
    for level in range(levels):
        low = wavelet_blur(low, 2**level)
    return image - low, low


def wavelet_color_fix(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``output`` plus low frequencies of ``reference``."""
    high, _ = wavelet_split(output)
    _, low = wavelet_split(reference)
    return (high + low).clamp_(0.0, 1.0)


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
