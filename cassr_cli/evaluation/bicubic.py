"""The ``bicubic`` variant: MATLAB-bicubic upsampling behind the pipeline interface the runner drives.

The runner (``cassr_cli.runner.run_batch``) takes a ``pipeline_factory``; giving it this pipeline makes
the baseline go through exactly what every other variant goes through — planned outputs, skip/overwrite
rules, atomic PNG writes, alpha handling, per-image records and stats — while the pixels are the
literature's bicubic baseline (:func:`~cassr_cli.evaluation.imresize.imresize`, rounded like MATLAB on
8-bit inputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cassr_cli.evaluation.imresize import imresize

if TYPE_CHECKING:
    import torch

    from cassr_cli.config import UpscaleConfig


@dataclass
class BicubicResult:
    """What the runner reads from a pipeline call."""

    image: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


class NativeScale:
    """Stands in for the activation stage in the runner's host-memory estimate (no native model)."""

    scale = 1


class BicubicPipeline:
    """Upsample ``[1, 3, H, W]`` float32 [0, 1] images to the requested size with MATLAB bicubic."""

    activation = NativeScale()
    diffusion = None

    def __call__(
        self,
        image: torch.Tensor,
        *,
        out_size: tuple[int, int],
        generator: torch.Generator | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> BicubicResult:
        import torch

        start = time.perf_counter()
        levels = image[0].permute(1, 2, 0).double().numpy() * 255.0
        on_8bit_grid = bool(np.abs(levels - np.round(levels)).max(initial=0.0) < 1e-3)
        if on_8bit_grid:  # an 8-bit input: MATLAB resizes uint8 images with rounding after each pass
            levels = np.round(levels)
        out = imresize(levels, out_size[0], out_size[1], quantize=on_8bit_grid)
        tensor = torch.from_numpy(np.clip(out / 255.0, 0.0, 1.0).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
        if progress is not None:
            progress("bicubic", 1, 1)
        return BicubicResult(tensor.contiguous(), {"bicubic": {"seconds": time.perf_counter() - start}})

    def close(self) -> None:
        """Nothing to release (the runner's pipelines may hold models)."""


def bicubic_factory(config: UpscaleConfig) -> BicubicPipeline:
    """``pipeline_factory`` for :func:`cassr_cli.runner.run_batch`."""
    return BicubicPipeline()
