"""The SCEdit activation's per-tile model: the frozen UNet with SCEdit tuners on its skip connections, each
tile conditioned on its own crop of the up-sampled LR image.

A :class:`SCEditModel` is a :class:`~cassr_cli.engine.tiled_denoiser.TileModel`, the second client of the
tiled denoiser next to stage 2's :class:`~cassr_cli.engine.guided_unet.MultiAttentionModel`. It needs no
guidance rows, no bank and no classifier-free guidance: one UNet row per tile, the empty prompt, and the
condition crop ``crops[CONDITION]`` that the denoiser cuts from ``up(x_lr)`` (an image-space condition
``f`` times the latent size, so its crop is the tile scaled by ``f``; shifted with the grid like the
latent when the grid moves).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cassr_cli.engine.canvas import CanvasPlacement
from cassr_cli.engine.tiled_denoiser import DenoiseStats, TileBatch

CONDITION = "condition"
"""The denoiser condition the model reads: ``up(x_lr)`` ``[1, 3, f·h, f·w]`` in [0, 1]."""


class SCEditModel:
    """The tile model of the SCEdit activation (module docstring).

    Args:
        tuned: a :class:`~cassr_cli.models.scedit.TunedUNet` (the shared base UNet with the tuner's hooks).
        text: the empty prompt's embedding ``[1, 77, D]`` (compute dtype, device).
        placement: where the condition canvas lives; on the host path each crop is moved to the compute
            device (through pinned memory) when its tile batch runs.
        stats: counters to fill (shared with the denoiser).
    """

    def __init__(
        self, tuned: torch.nn.Module, text: torch.Tensor, *, placement: CanvasPlacement, stats: DenoiseStats | None = None
    ) -> None:
        self.tuned = tuned
        self.text = text
        self.placement = placement
        self.stats = stats if stats is not None else DenoiseStats()
        self._text_rows: dict[int, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, batch: TileBatch, crops: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predictions ``[T, C, th, tw]`` (the UNet's dtype) for the tiles ``x`` ``[T, C, th, tw]``, each with its
        crop ``crops[CONDITION]`` ``[T, 3, f·th, f·tw]``."""
        n = x.shape[0]
        condition = self.placement.to_compute(crops[CONDITION])
        out = self.tuned(x, t, self._text_batch(n), condition)
        self.stats.unet_calls += 1
        self.stats.unet_rows += n
        return out

    def _text_batch(self, n: int) -> torch.Tensor:
        rows = self._text_rows.get(n)
        if rows is None:
            rows = self._text_rows[n] = self.text.expand(n, -1, -1)
        return rows
