"""The miniature's training data: the HR photos of BSD100 ×4 with a fixed 80/20 split, and seeded crops.

The split is by image number: ``img_NNN_SRF_4_HR.png`` with ``NNN`` divisible by 5 (005, 010, …, 100) is
validation, the other 80 are training. Set5 and Set14 are never used. Every crop of a step comes from a
generator seeded by ``(seed, part, step)``, so a resumed part sees exactly the data an uninterrupted one
would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from cassr_cli.training.data import generator_for

HR_PATTERN = re.compile(r"img_(\d{3})_SRF_4_HR\.png$")
VALIDATION_EVERY = 5


@dataclass(frozen=True)
class Split:
    """Training and validation HR files, each sorted by name."""

    train: tuple[Path, ...]
    validation: tuple[Path, ...]


def split_bsd100(folder: Path) -> Split:
    """The fixed split of ``folder``'s ``img_NNN_SRF_4_HR.png`` files (validation: ``NNN % 5 == 0``).

    Raises:
        FileNotFoundError: the folder holds none of those files.
    """
    files = sorted(p for p in folder.iterdir() if HR_PATTERN.search(p.name))
    if not files:
        raise FileNotFoundError(f"no img_NNN_SRF_4_HR.png files in {folder}")
    numbers = {p: int(HR_PATTERN.search(p.name).group(1)) for p in files}  # type: ignore[union-attr]
    validation = tuple(p for p in files if numbers[p] % VALIDATION_EVERY == 0)
    train = tuple(p for p in files if numbers[p] % VALIDATION_EVERY != 0)
    return Split(train, validation)


def load_images(paths: tuple[Path, ...]) -> list[torch.Tensor]:
    """Each file as a ``[3, H, W]`` uint8 tensor (RGB), in order."""
    import numpy as np
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        out.append(torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous())
    return out


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` → float32 in [-1, 1] (the VAE's input range)."""
    return image.float().div(127.5).sub(1.0)


def random_crops(images: list[torch.Tensor], count: int, size: int, seed: int, part: str, step: int) -> torch.Tensor:
    """``[count, C, size, size]`` crops (random image, position and horizontal flip) of ``images``
    (each ``[C, H, W]``, any dtype), drawn from the generator of ``(seed, part, step)``."""
    generator = generator_for(seed, "miniature", part, step)
    crops = []
    for _ in range(count):
        index = int(torch.randint(len(images), (1,), generator=generator))
        image = images[index]
        height, width = image.shape[-2:]
        y = int(torch.randint(height - size + 1, (1,), generator=generator))
        x = int(torch.randint(width - size + 1, (1,), generator=generator))
        crop = image[..., y : y + size, x : x + size]
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops)
