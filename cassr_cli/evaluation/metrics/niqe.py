"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan and Bovik, IEEE SPL 2013). Lower is better.

A faithful port of the authors' MATLAB release (``computequality.m``), as ported by BasicSR and pyiqa:

1. grey levels: ``round(0.299 R + 0.587 G + 0.114 B)`` on 0–255 (pyiqa's default, MATLAB's ``rgb2gray``);
2. crop to whole 96×96 blocks; at two scales (the second a MATLAB-bicubic half-size image):
   mean-subtracted contrast-normalised coefficients with a 7×7 Gaussian (σ = 7/6, edges replicated),
   then per block 18 features: the generalised Gaussian fit of the coefficients and asymmetric
   generalised Gaussian fits of their products with the four neighbours;
3. a multivariate Gaussian of the blocks' 36 features, compared with the pristine model:
   ``sqrt((μp − μd)ᵀ ((Σp + Σd) / 2)⁺ (μp − μd))``.

The pristine model ships with cassr (``data/niqe_pris_params.npz``, see ``data/NOTICE``), so NIQE needs
no download. Tests check it against pyiqa's NIQE fed the same parameters. Pure numpy + OpenCV.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import cv2
import numpy as np

from cassr_cli.evaluation.imresize import imresize

BLOCK = 96
"""Block size of the first scale (the release's recommended value)."""

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

_GAMMA_GRID = np.arange(0.2, 10.0 + 1e-9, 0.001)
"""Shape parameters searched by the moment-matching fit (MATLAB ``0.2:0.001:10``)."""


@functools.cache
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mu [36], cov [36, 36], window [7, 7])`` of the pristine natural-image model."""
    with resources.files("cassr_cli.evaluation.metrics").joinpath("data/niqe_pris_params.npz").open("rb") as f:
        data = np.load(f)
        return (
            np.asarray(data["mu_pris_param"], dtype=np.float64).ravel(),
            np.asarray(data["cov_pris_param"], dtype=np.float64),
            np.asarray(data["gaussian_window"], dtype=np.float64),
        )


@functools.cache
def _ratio_table() -> np.ndarray:
    """``Γ(2/γ)² / (Γ(1/γ) Γ(3/γ))`` over :data:`_GAMMA_GRID` (via log-gamma, no overflow)."""
    g = _GAMMA_GRID
    return np.exp(2 * _lgamma(2 / g) - _lgamma(1 / g) - _lgamma(3 / g))


def grey_levels(image: np.ndarray) -> np.ndarray:
    """Rounded 0–255 grey levels (float64 ``[H, W]``) of an RGB ``[H, W, 3]`` or grey image in 0–255."""
    data = np.asarray(image, dtype=np.float64)
    if data.ndim == 3:
        data = data[:, :, 0] if data.shape[2] == 1 else data @ GREY_WEIGHTS
    return np.floor(data + 0.5)


def niqe(image: np.ndarray) -> float:
    """NIQE of an image (RGB ``[H, W, 3]`` or grey ``[H, W]``, values 0–255). Lower is better.

    Raises:
        ValueError: the image is smaller than one 96×96 block.
    """
    mu_p, cov_p, window = pristine_model()
    grey = grey_levels(image)
    rows, cols = grey.shape[0] // BLOCK, grey.shape[1] // BLOCK
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs at least {BLOCK}x{BLOCK} pixels, got {grey.shape[1]}x{grey.shape[0]}")
    img = grey[: rows * BLOCK, : cols * BLOCK]
    features = []
    for scale in (1, 2):
        normalised = _mscn(img, window)
        size = BLOCK // scale
        blocks = normalised.reshape(rows, size, cols, size).transpose(0, 2, 1, 3).reshape(-1, size, size)
        features.append(_block_features(blocks))
        if scale == 1:
            img = imresize(img / 255.0, img.shape[0] // 2, img.shape[1] // 2) * 255.0
    dist = np.concatenate(features, axis=1)
    complete = dist[~np.isnan(dist).any(axis=1)]
    if len(complete) == 0:
        raise ValueError("NIQE is undefined for this image: every block is flat")
    mu_d = np.nanmean(dist, axis=0)
    cov_d = np.cov(complete, rowvar=False, ddof=1 if len(complete) > 1 else 0)  # MATLAB: N = 1 divides by N
    diff = mu_p - mu_d
    pooled = (cov_p + cov_d) / 2.0
    # MATLAB pinv tolerance: max(size) * eps * largest singular value
    quality = diff @ np.linalg.pinv(pooled, rcond=max(pooled.shape) * np.finfo(np.float64).eps) @ diff
    return float(np.sqrt(quality))


def _mscn(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients: ``(I − μ) / (σ + 1)`` with a Gaussian window
    and replicated edges (MATLAB ``imfilter(..., 'replicate')``)."""
    mu = cv2.filter2D(image, cv2.CV_64F, window, borderType=cv2.BORDER_REPLICATE)
    second = cv2.filter2D(image * image, cv2.CV_64F, window, borderType=cv2.BORDER_REPLICATE)
    sigma = np.sqrt(np.abs(second - mu * mu))
    return (image - mu) / (sigma + 1.0)


def _block_features(blocks: np.ndarray) -> np.ndarray:
    """The 18 NIQE features of each block: ``[N, 18]`` for ``blocks`` ``[N, h, w]``."""
    n = blocks.shape[0]
    flat = blocks.reshape(n, -1)
    alpha, left, right = _aggd(flat)
    columns = [alpha, (left + right) / 2.0]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # MATLAB circshift: rows, then columns
        shifted = np.roll(blocks, shift, axis=(1, 2)).reshape(n, -1)
        alpha, left, right = _aggd(flat * shifted)
        mean = (right - left) * np.exp(_lgamma(2.0 / alpha) - _lgamma(1.0 / alpha))
        columns += [alpha, mean, left, right]
    return np.stack(columns, axis=1)


def _aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit of each row by moment matching (the release's
    ``estimateaggdparam``): ``(alpha, beta_left, beta_right)``, each ``[N]``."""
    neg = samples < 0
    pos = samples > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.sum(np.where(neg, samples * samples, 0.0), axis=1) / neg.sum(axis=1))
        right = np.sqrt(np.sum(np.where(pos, samples * samples, 0.0), axis=1) / pos.sum(axis=1))
        gamma_hat = left / right
        r_hat = np.mean(np.abs(samples), axis=1) ** 2 / np.mean(samples * samples, axis=1)
        r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    table = _ratio_table()
    alpha = np.empty(samples.shape[0])
    for i, value in enumerate(r_norm):  # one row at a time keeps memory at the table's size
        alpha[i] = _GAMMA_GRID[np.argmin((table - value) ** 2)] if np.isfinite(value) else np.nan
    ratio = np.sqrt(np.exp(_lgamma(1.0 / alpha) - _lgamma(3.0 / alpha)))
    return alpha, left * ratio, right * ratio


def _lgamma(values: np.ndarray) -> np.ndarray:
    """Elementwise ``log Γ`` (NaN stays NaN)."""
    return np.vectorize(math.lgamma, otypes=[np.float64])(values)
