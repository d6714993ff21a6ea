"""PSNR and SSIM the way the SR literature reports them (EDSR/RCAN tables, basicsr's ``psnr_ssim.py``).

* Images are compared as 8-bit levels (0–255, float64), HR mod-cropped to the output size.
* A border of ``scale`` pixels is cropped from both images first.
* ``psnr_y`` / ``ssim_y``: on the luma of BT.601 Y'CbCr, ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
  (MATLAB's ``rgb2ycbcr`` on ``[0, 1]`` RGB; not rounded, as basicsr). A grey image is its own Y.
* ``psnr_rgb``: on all three channels.
* SSIM: Wang et al.'s definition with an 11×11 Gaussian window (σ = 1.5), ``K1 = 0.01``, ``K2 = 0.03``,
  ``L = 255``, statistics over the "valid" part of the window (MATLAB ``ssim_index.m``, basicsr).

Independent checks in tests: scikit-image's SSIM and pyiqa's PSNR/SSIM agree where installed, and the
bicubic ×4 baseline reproduces the published Set5/BSD100 values. Pure numpy + OpenCV; no torch.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
"""RGB (0–255) → Y' (16–235) weights of BT.601, as MATLAB's ``rgb2ycbcr``."""

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
PEAK = 255.0


def to_y(image: np.ndarray) -> np.ndarray:
    """Y' of an ``[H, W, 3]`` RGB image in 0–255 (float64 ``[H, W]`` in 16–235); ``[H, W]`` and
    ``[H, W, 1]`` grey images are returned as they are."""
    data = np.asarray(image, dtype=np.float64)
    if data.ndim == 2:
        return data
    if data.shape[2] == 1:
        return data[:, :, 0]
    return data @ Y_WEIGHTS + 16.0


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    """``image`` without ``border`` pixels on each side (unchanged for 0)."""
    if border <= 0:
        return image
    if image.shape[0] <= 2 * border or image.shape[1] <= 2 * border:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small for a {border}-pixel border crop")
    return image[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two same-shaped arrays of 0–255 values; ``inf`` when they are equal."""
    _same_shape(a, b)
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK * PEAK / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two same-shaped ``[H, W]`` arrays of 0–255 values (mean over the valid window positions).

    Raises:
        ValueError: shapes differ, or a side is shorter than the 11-pixel window.
    """
    _same_shape(a, b)
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ssim expects [H, W] arrays, got shape {x.shape}")
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"image {x.shape[1]}x{x.shape[0]} is smaller than the {SSIM_WINDOW}-pixel SSIM window")
    c1 = (0.01 * PEAK) ** 2
    c2 = (0.03 * PEAK) ** 2
    mu_x, mu_y = _gauss_valid(x), _gauss_valid(y)
    var_x = _gauss_valid(x * x) - mu_x * mu_x
    var_y = _gauss_valid(y * y) - mu_y * mu_y
    cov = _gauss_valid(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def _gauss_valid(image: np.ndarray) -> np.ndarray:
    """The 11×11 Gaussian-weighted mean at every position where the window lies inside the image."""
    kernel = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA)  # separable: the same weights as the 2-D window
    half = SSIM_WINDOW // 2
    filtered = cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    return filtered[half:-half, half:-half]


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if np.shape(a) != np.shape(b):
        raise ValueError(f"images differ in shape: {np.shape(a)} vs {np.shape(b)}")


def full_reference_scores(sr: np.ndarray, hr: np.ndarray, *, border: int) -> dict[str, float]:
    """``psnr_y``, ``ssim_y`` and ``psnr_rgb`` of an output against its reference.

    Args:
        sr, hr: ``[H, W, 3]`` (or grey ``[H, W]``/``[H, W, 1]``) in 0–255, the same shape.
        border: pixels cropped from each side first (the scale, by convention).
    """
    _same_shape(sr, hr)
    sr_c = crop_border(np.asarray(sr, dtype=np.float64), border)
    hr_c = crop_border(np.asarray(hr, dtype=np.float64), border)
    sr_y, hr_y = to_y(sr_c), to_y(hr_c)
    return {"psnr_y": psnr(sr_y, hr_y), "ssim_y": ssim(sr_y, hr_y), "psnr_rgb": psnr(sr_c, hr_c)}
