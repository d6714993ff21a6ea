"""Images as the metrics see them: 8-bit levels in float64, HR mod-cropped. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Picture:
    """One image for scoring.

    Attributes:
        levels: float64 ``[H, W, 3]``, values on the 0–255 scale (integers for 8-bit files; 16-bit
            files keep their precision); grey images are replicated to three channels.
        is_gray: the file was greyscale (full-reference metrics then use the grey values as Y).
    """

    levels: np.ndarray
    is_gray: bool

    @property
    def height(self) -> int:
        return int(self.levels.shape[0])

    @property
    def width(self) -> int:
        return int(self.levels.shape[1])

    def for_full_reference(self, other: Picture) -> np.ndarray:
        """The array to compare with ``other``: ``[H, W]`` grey when both are grey, else RGB."""
        return self.levels[:, :, 0] if self.is_gray and other.is_gray else self.levels

    def tensor(self, device: torch.device) -> torch.Tensor:
        """``[1, 3, H, W]`` float32 in [0, 1] on ``device`` (the learned metrics' input)."""
        import torch

        data = np.ascontiguousarray(self.levels.transpose(2, 0, 1) / 255.0, dtype=np.float32)
        return torch.from_numpy(data).unsqueeze(0).to(device)

    def cropped(self, height: int, width: int) -> Picture:
        """The top-left ``height × width`` part."""
        return Picture(self.levels[:height, :width], self.is_gray)


def read_picture(path: Path, *, max_pixels: int) -> Picture:
    """Read an image file for scoring (EXIF orientation applied; alpha ignored).

    Raises:
        UnsupportedImageError, ImageTooLargeError: as :func:`cassr_cli.io.image.read_image`.
    """
    from cassr_cli.io.image import read_image

    decoded = read_image(path, max_pixels=max_pixels)
    top = 255.0
    levels = decoded.rgb.astype(np.float64) * top
    if decoded.bit_depth == 8:
        levels = np.floor(levels + 0.5)  # exact 8-bit integers (the file's values)
    return Picture(levels, decoded.is_gray)


def mod_crop(picture: Picture, scale: int) -> Picture:
    """Crop the bottom/right so both sides are multiples of ``scale`` (the literature's ``modcrop``)."""
    return picture.cropped(picture.height - picture.height % scale, picture.width - picture.width % scale)
