"""The zoomed region every picture of an image is shown at: given (``--crop x,y,w,h``) or the most
detailed region of the reference. Pure numpy + OpenCV."""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from cassr_cli.errors import UsageError

MIN_SIDE = 32
MAX_SIDE = 128


@dataclass(frozen=True)
class Crop:
    """A rectangle in output (HR) pixels: top-left ``(x, y)``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    def to_json(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}

    def cut(self, levels: np.ndarray) -> np.ndarray:
        return levels[self.y : self.y + self.h, self.x : self.x + self.w]

    def scaled(self, factor: int) -> Crop:
        return Crop(self.x * factor, self.y * factor, self.w * factor, self.h * factor)

    def divided(self, factor: int) -> Crop:
        return Crop(self.x // factor, self.y // factor, self.w // factor, self.h // factor)


def parse_crop(text: str) -> Crop:
    """``"x,y,w,h"`` (integers, w and h positive) → :class:`Crop`.

    Raises:
        UsageError: anything else.
    """
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"--crop {text!r} is not x,y,w,h (four integers)", hint="e.g. --crop 120,80,128,128")
    x, y, w, h = (int(v) for v in match.groups())
    if w < 1 or h < 1:
        raise UsageError(f"--crop {text!r}: width and height must be positive")
    return Crop(x, y, w, h)


def fit_crop(crop: Crop, height: int, width: int, *, multiple: int = 1) -> Crop:
    """``crop`` moved and shrunk to lie inside a ``height × width`` image, its corners on multiples of
    ``multiple`` (so the same region can be cut from the LR input exactly)."""
    w = max(multiple, min(crop.w, width) // multiple * multiple)
    h = max(multiple, min(crop.h, height) // multiple * multiple)
    x = min(crop.x, width - w) // multiple * multiple
    y = min(crop.y, height - h) // multiple * multiple
    return Crop(max(0, x), max(0, y), min(w, width), min(h, height))


def crop_side(height: int, width: int) -> int:
    """The side of an automatic (square) crop: a quarter of the shorter side, 32–128 pixels."""
    return max(1, min(height, width, max(MIN_SIDE, min(MAX_SIDE, min(height, width) // 4))))


def detail_crop(levels: np.ndarray, *, side: int | None = None, multiple: int = 1) -> Crop:
    """The square region with the most detail (largest summed gradient magnitude of the grey image),
    searched on a grid of 1/8 of the crop side; the first of equals wins, so it is deterministic.

    Args:
        levels: ``[H, W, 3]`` or ``[H, W]`` values in 0–255.
        side: the crop's side (default :func:`crop_side`).
        multiple: snap the corner and side to multiples of this.
    """
    grey = np.asarray(levels, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    height, width = grey.shape
    side = min(side or crop_side(height, width), height, width)
    gx = cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)
    energy = np.sqrt(gx * gx + gy * gy)
    integral = cv2.integral(energy, sdepth=cv2.CV_64F)
    stride = max(multiple, side // 8)
    ys = np.arange(0, height - side + 1, stride)
    xs = np.arange(0, width - side + 1, stride)
    sums = (
        integral[ys[:, None] + side, xs[None, :] + side]
        - integral[ys[:, None], xs[None, :] + side]
        - integral[ys[:, None] + side, xs[None, :]]
        + integral[ys[:, None], xs[None, :]]
    )
    iy, ix = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return fit_crop(Crop(int(xs[ix]), int(ys[iy]), side, side), height, width, multiple=multiple)
