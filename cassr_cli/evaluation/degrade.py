"""Synthetic LR inputs for ``cassr eval --degrade bicubic|realesrgan``, deterministic from ``--seed``.

* ``bicubic``: MATLAB ``imresize(HR, 1/scale)`` with antialiasing, on 8-bit levels (how Set5/Set14,
  BSD100, Urban100 and DIV2K's ``LR_bicubic`` were made).
* ``realesrgan``: the second-order degradation model ``cassr train`` uses
  (:func:`cassr_cli.training.degradations.degrade`, Real-ESRGAN's settings), one fixed generator per
  image seeded from ``(--seed, image name)`` — how StableSR and SeeSR build DIV2K-Val test inputs.
  The same seed gives the same LR for an image whatever else is in the set.

The HR is mod-cropped to a multiple of the scale first. LR files are 8-bit PNGs written atomically to
``OUT/lr/``; a re-run reuses them (their recipe is recorded next to them and checked).
"""

from __future__ import annotations

import numpy as np

from cassr_cli.evaluation.imresize import imresize
from cassr_cli.evaluation.pictures import Picture
from cassr_cli.runtime.seeding import derive_seed

DEGRADATIONS = ("bicubic", "realesrgan")


def synthesise_lr(hr: Picture, *, method: str, scale: int, seed: int, key: str) -> np.ndarray:
    """The LR input for a (mod-cropped) HR picture.

    Args:
        hr: the reference, sides multiples of ``scale``.
        method: ``bicubic`` or ``realesrgan``.
        scale: the integer SR factor.
        seed: the base seed (``--seed``); only ``realesrgan`` is random.
        key: the image's name, mixed into its seed.

    Returns:
        float64 ``[H / scale, W / scale, 3]`` of integer 8-bit levels (0–255).
    """
    if hr.height % scale or hr.width % scale:
        raise ValueError(f"HR {hr.width}x{hr.height} is not a multiple of scale {scale}")
    out_h, out_w = hr.height // scale, hr.width // scale
    if method == "bicubic":
        levels = np.floor(hr.levels + 0.5) if not _is_integral(hr.levels) else hr.levels
        return imresize(levels, out_h, out_w, quantize=True)
    if method == "realesrgan":
        return _realesrgan(hr, scale=scale, seed=derive_seed(seed, "degrade", key))
    raise ValueError(f"unknown degradation {method!r}; expected one of {', '.join(DEGRADATIONS)}")


def _realesrgan(hr: Picture, *, scale: int, seed: int) -> np.ndarray:
    import torch

    from cassr_cli.training.degradations import DegradationConfig, degrade

    x = torch.from_numpy(np.ascontiguousarray(hr.levels.transpose(2, 0, 1) / 255.0, dtype=np.float32)).unsqueeze(0)
    generator = torch.Generator("cpu").manual_seed(seed)
    lr = degrade(x, DegradationConfig(scale=scale), generator)  # [1, 3, h, w] on the 8-bit grid
    return np.floor(lr[0].permute(1, 2, 0).double().numpy() * 255.0 + 0.5)


def _is_integral(values: np.ndarray) -> bool:
    return bool(np.all(values == np.floor(values)))
