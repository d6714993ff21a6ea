"""Training data: random crops of HR photos (LR synthesised on the device) and optional pre-made pairs.

Determinism: every random choice of a sample (which image, where to crop, flips) comes from a generator
seeded with ``(seed, sample number)``, and sample numbers are a pure function of (optimizer step,
micro-batch, process rank, position in the batch) — see :class:`StepSampler`. The data a step sees
therefore does not depend on the number of DataLoader workers, and a resumed run sees exactly the data
an uninterrupted run would. The degradations of a micro-batch are drawn from their own generator,
seeded with ``(seed, step, micro-batch, rank)`` (:func:`degrade_batch`).

Images are read with :func:`cassr_cli.io.image.read_image` (EXIF orientation applied, 16-bit and gray
handled, alpha ignored) from anything :func:`cassr_cli.io.discover.discover` accepts: folders
(recursive), files and globs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from cassr_cli.errors import ConfigError
from cassr_cli.runtime.seeding import derive_seed
from cassr_cli.training.config import DataConfig
from cassr_cli.training.degradations import DegradationConfig, degrade

logger = logging.getLogger(__name__)


def generator_for(seed: int, *parts: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed`."""
    return torch.Generator("cpu").manual_seed(derive_seed(seed, *parts))


@dataclass(frozen=True)
class TrainingImage:
    """One training image: an HR photo, with its pre-made LR counterpart when it comes from a pair."""

    hr: Path
    lr: Path | None = None


def find_training_images(config: DataConfig) -> list[TrainingImage]:
    """All training images ``config`` names, in a deterministic order (HR sources, then pairs).

    Raises:
        ConfigError: nothing found, or pair folders without any matching names.
        InputNotFoundError: a named source does not exist.
    """
    from cassr_cli.io.discover import discover

    images: list[TrainingImage] = []
    if config.hr_dirs:
        images += [TrainingImage(item.path) for item in discover(config.hr_dirs, recursive=True).items]
    if config.paired_hr_dir:
        images += _pairs(config)
    if not images:
        raise ConfigError("no training images: set data.hr_dirs (folders of HR photos) or data.paired_*_dir")
    logger.info("%d training images", len(images))
    return images


def _pair_key(relative: PurePosixPath, suffix: str) -> str:
    stem = relative.stem
    if suffix and stem.endswith(suffix):
        stem = stem[: -len(suffix)]
    return str(relative.parent / stem)


def _pairs(config: DataConfig) -> list[TrainingImage]:
    from cassr_cli.io.discover import discover

    hr = {_pair_key(i.relative, config.paired_hr_suffix): i.path for i in discover([config.paired_hr_dir], recursive=True).items}
    lr = {_pair_key(i.relative, config.paired_lr_suffix): i.path for i in discover([config.paired_lr_dir], recursive=True).items}
    keys = sorted(set(hr) & set(lr))
    if not keys:
        raise ConfigError(
            f"no LR/HR pairs matched between {config.paired_lr_dir} and {config.paired_hr_dir}",
            hint="pairs match by relative path and stem; set data.paired_hr_suffix / paired_lr_suffix (e.g. '_HR', '_LR')",
        )
    unmatched = len(hr) + len(lr) - 2 * len(keys)
    if unmatched:
        logger.warning("%d files in the pair folders have no counterpart and are not used", unmatched)
    return [TrainingImage(hr[k], lr[k]) for k in keys]


def _read(path: Path, max_pixels: int) -> torch.Tensor:
    """``[3, H, W]`` float32 in [0, 1] (alpha dropped)."""
    from cassr_cli.io.image import read_image

    decoded = read_image(path, max_pixels=max_pixels)
    return torch.from_numpy(decoded.rgb).permute(2, 0, 1).contiguous()


def _pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``[C, H, W]`` at the bottom/right to at least ``height × width`` (reflect, else replicate)."""
    pad_h, pad_w = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < image.shape[-2] and pad_w < image.shape[-1] else "replicate"
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]


class CropDataset(Dataset):
    """Sample number → one training crop. Map-style, so any DataLoader worker can produce any sample.

    Each pass over the data ("epoch" ``n // len(images)``) visits every image once, in an order drawn
    from ``(seed, epoch)``; crop position and flips come from ``(seed, n)``.

    Returns per sample a dict: ``hr`` ``[3, C, C]`` float32 in [0, 1]; ``lr`` ``[3, C/s, C/s]`` (the pair's
    LR crop, zeros for synthetic samples); ``paired`` (bool tensor).
    """

    def __init__(self, images: Sequence[TrainingImage], config: DataConfig, seed: int) -> None:
        self.images = list(images)
        self.config = config
        self.seed = seed
        self._order: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def image_index(self, n: int) -> int:
        epoch, position = divmod(n, len(self.images))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, torch.randperm(len(self.images), generator=generator_for(self.seed, "epoch", epoch)))
        return int(self._order[1][position])

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        image = self.images[self.image_index(n)]
        generator = generator_for(self.seed, "sample", n)
        size, scale = self.config.crop_size, self.config.scale
        hr = _read(image.hr, self.config.max_pixels)
        if image.lr is None:
            lr = None
            hr = _pad_to(hr, size, size)
            y = int(torch.randint(hr.shape[-2] - size + 1, (1,), generator=generator))
            x = int(torch.randint(hr.shape[-1] - size + 1, (1,), generator=generator))
            hr = hr[:, y : y + size, x : x + size]
        else:
            hr, lr = self._paired_crop(hr, _read(image.lr, self.config.max_pixels), image, generator)
        hr, lr = self._augment(hr, lr, generator)
        lr_size = size // scale
        return {
            "hr": hr.contiguous(),
            "lr": lr.contiguous() if lr is not None else torch.zeros(3, lr_size, lr_size),
            "paired": torch.tensor(lr is not None),
        }

    def _paired_crop(
        self, hr: torch.Tensor, lr: torch.Tensor, image: TrainingImage, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scale, lr_size = self.config.scale, self.config.crop_size // self.config.scale
        h, w = lr.shape[-2:]
        if hr.shape[-2] < h * scale or hr.shape[-1] < w * scale:
            raise ConfigError(
                f"pair {image.lr} ({w}×{h}) and {image.hr} ({hr.shape[-1]}×{hr.shape[-2]}) do not match scale {scale}"
            )
        hr = _pad_to(hr[:, : h * scale, : w * scale], lr_size * scale, lr_size * scale)
        lr = _pad_to(lr, lr_size, lr_size)
        y = int(torch.randint(lr.shape[-2] - lr_size + 1, (1,), generator=generator))
        x = int(torch.randint(lr.shape[-1] - lr_size + 1, (1,), generator=generator))
        lr = lr[:, y : y + lr_size, x : x + lr_size]
        hr = hr[:, y * scale : (y + lr_size) * scale, x * scale : (x + lr_size) * scale]
        return hr, lr

    def _augment(
        self, hr: torch.Tensor, lr: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        draws = torch.rand(2, generator=generator)  # always drawn, so options do not shift later draws
        turns = int(torch.randint(4, (1,), generator=generator))
        if self.config.hflip and draws[0] < 0.5:
            hr, lr = hr.flip(-1), None if lr is None else lr.flip(-1)
        if self.config.rot90 and turns:
            hr, lr = hr.rot90(turns, (-2, -1)), None if lr is None else lr.rot90(turns, (-2, -1))
        return hr, lr


def sample_number(step: int, micro: int, rank: int, position: int, *, accumulation: int, world: int, batch: int) -> int:
    """The sample a position of a micro-batch holds: ``((step·A + micro)·W + rank)·B + position``."""
    return ((step * accumulation + micro) * world + rank) * batch + position


class StepSampler(Sampler[int]):
    """The sample numbers this process reads, from optimizer step ``start_step`` to ``max_steps``, in
    micro-batch order (see :func:`sample_number`). Processes never share a sample."""

    def __init__(
        self, *, start_step: int, max_steps: int, accumulation: int, world: int, rank: int, batch: int
    ) -> None:
        self.start_step, self.max_steps = start_step, max_steps
        self.accumulation, self.world, self.rank, self.batch = accumulation, world, rank, batch

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accumulation * self.batch

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.accumulation):
                first = sample_number(
                    step, micro, self.rank, 0, accumulation=self.accumulation, world=self.world, batch=self.batch
                )
                yield from range(first, first + self.batch)


def make_loader(
    dataset: CropDataset, sampler: StepSampler, *, num_workers: int, pin_memory: bool
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding micro-batches ``{"hr": [B, 3, C, C], "lr": [B, 3, C/s, C/s], "paired": [B]}``."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=sampler.batch,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


@torch.no_grad()
def degrade_batch(
    batch: dict[str, torch.Tensor], config: DegradationConfig, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch on ``device``: HR ``[B, 3, C, C]`` and LR ``[B, 3, C/s, C/s]`` float32 in [0, 1].

    Synthetic samples get their LR from the second-order degradation model (batched on ``device``,
    every draw from ``generator``); paired samples keep their pre-made LR.
    """
    hr = batch["hr"].to(device, torch.float32, non_blocking=True)
    lr = batch["lr"].to(device, torch.float32, non_blocking=True)
    paired = batch["paired"].to(torch.bool)
    synthetic = (~paired).nonzero().flatten()
    if len(synthetic) == len(paired):
        lr = degrade(hr, config, generator)
    elif len(synthetic):
        rows = synthetic.to(device)
        lr = lr.index_copy(0, rows, degrade(hr.index_select(0, rows), config, generator))
    return hr, lr
