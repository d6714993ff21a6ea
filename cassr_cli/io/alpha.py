"""Alpha-channel helpers: keep upscaled edges free of dark halos (torch-free: NumPy/OpenCV only).

Transparent pixels often store black (or arbitrary) colour. An upscaling model, and any interpolation, mixes
that colour into the visible pixels next to it, and the upscaled alpha then reveals a dark fringe along
every edge. :func:`fill_transparent_colors` replaces the colour under transparent pixels with colour bled
from nearby visible pixels before the colour is upscaled; :func:`resize_alpha` scales the alpha channel on
its own.

All arrays are float32: colour ``[H, W, 3]`` and alpha ``[H, W]``, both in ``[0, 1]``.
"""

from __future__ import annotations

import cv2
import numpy as np

OPAQUE_THRESHOLD = 1.0 - 0.5 / 65535
"""Alpha at or above this counts as fully opaque (it quantises to full opacity even at 16 bits)."""

_SNAP = 1e-6
"""Interpolated alpha within this of 0 or 1 is snapped there, so solid regions stay exactly solid."""


def is_fully_opaque(alpha: np.ndarray) -> bool:
    """True when every pixel of ``alpha [H, W]`` is (to 16-bit precision) fully opaque."""
    return bool(alpha.size == 0 or float(np.min(alpha)) >= OPAQUE_THRESHOLD)


def fill_transparent_colors(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Replace the colour under (partly) transparent pixels with colour bled from visible neighbours.

    Alpha-weighted push-pull: build a pyramid of premultiplied colour ``rgb·a`` and weight ``a`` by 2×
    area-averaging down to one pixel; the coarsest level's colour is ``Σ rgb·a / Σ a``; each finer level
    composites its own premultiplied colour over the (bilinearly upsampled) coarser fill,
    ``fill_l = P_l + (1 − W_l) · up(fill_{l+1})``. The result is ``rgb·a + fill·(1 − a)`` per pixel: fully
    opaque pixels keep their colour exactly, fully transparent ones get the fill.

    Args:
        rgb: float32 ``[H, W, 3]`` in ``[0, 1]``.
        alpha: float32 ``[H, W]`` in ``[0, 1]``.

    Returns:
        float32 ``[H, W, 3]``. A fully transparent image is returned unchanged (there is nothing to bleed).
    """
    if rgb.shape[:2] != alpha.shape:
        raise ValueError(f"alpha shape {alpha.shape} does not match the image {rgb.shape[:2]}")
    a = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    if not np.any(a > 0):
        return rgb
    color = np.asarray(rgb, dtype=np.float32)
    premultiplied = color * a[..., None]
    fill = _push_pull(premultiplied, a)
    return np.where(a[..., None] >= 1.0, color, premultiplied + fill * (1.0 - a[..., None])).astype(
        np.float32
    )


def _push_pull(premultiplied: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The bled colour ``[H, W, 3]`` at every pixel (pyramid pull, then push back down)."""
    levels = [(premultiplied, weight)]
    while max(levels[-1][1].shape) > 1:
        p, w = levels[-1]
        size = ((w.shape[1] + 1) // 2, (w.shape[0] + 1) // 2)  # cv2 takes (width, height)
        levels.append((_resize(p, size, cv2.INTER_AREA), _resize(w, size, cv2.INTER_AREA)))
    p_top, w_top = levels[-1]
    fill = p_top / np.maximum(w_top, np.float32(1e-30))[..., None]
    for p, w in reversed(levels[:-1]):
        up = _resize(fill, (w.shape[1], w.shape[0]), cv2.INTER_LINEAR)
        fill = p + up * (1.0 - w)[..., None]
    return np.clip(fill, 0.0, 1.0)


def _resize(arr: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """cv2.resize to ``size = (width, height)`` keeping a trailing channel axis of length 3."""
    out = cv2.resize(arr, size, interpolation=interpolation)
    return out.reshape(size[1], size[0], *arr.shape[2:])


def resize_alpha(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``alpha [h, w]`` (float32 in ``[0, 1]``) to ``[height, width]``.

    Bicubic when enlarging (both sides grow or stay), area averaging otherwise; clipped to ``[0, 1]``, and
    values within 1e-6 of 0 or 1 snapped there, so solid regions away from edges stay exactly 0 or 1.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}×{width}")
    a = np.asarray(alpha, dtype=np.float32)
    if a.shape == (height, width):
        return a.copy()
    enlarging = height >= a.shape[0] and width >= a.shape[1]
    out = cv2.resize(a, (width, height), interpolation=cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA)
    out = np.clip(out, 0.0, 1.0)
    out[out < _SNAP] = 0.0
    out[out > 1.0 - _SNAP] = 1.0
    return out.astype(np.float32)
