"""The sampling loop — diffusers' own — and the noise of one image.

The loop knows nothing of tiles or guidance: it asks a *denoiser* (``denoiser(x, t) → prediction``, e.g. a
:class:`~cassr_cli.engine.tiled_denoiser.TiledDenoiser`) for the model's prediction on the full latent and
lets the diffusers scheduler step. Any callable with that signature can be sampled, so the loop is tested
apart from tiling.

Latents are ``[1, C, h, w]`` float32 on the compute device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample(
    denoiser: Denoiser, scheduler: Any, latent: torch.Tensor, timesteps: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Run ``scheduler`` over ``timesteps`` from ``latent``; returns the final latent.

    ``generator`` feeds stochastic samplers (e.g. Euler ancestral); deterministic ones ignore it. Nothing
    here waits for the device.
    """
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in timesteps:
        prediction = denoiser(scheduler.scale_model_input(latent, t), t)
        latent = scheduler.step(prediction, t, latent, **step_kwargs).prev_sample
    return latent


@dataclass(frozen=True)
class Noise:
    """All noise of one image's refinement, at full latent size (float32, device): ``start`` noises the
    reference to ``t0``; ``streams`` noise each guidance latent. Tiles slice it, so overlapping tiles see
    the same noise wherever they overlap."""

    start: torch.Tensor
    streams: Mapping[str, torch.Tensor]

    @classmethod
    def draw(cls, shape: tuple[int, ...], streams: tuple[str, ...], generator: torch.Generator, device: torch.device) -> Noise:
        """Draw on the CPU from ``generator`` (device-independent values), then move to ``device``."""
        start = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        per_stream = {s: torch.randn(shape, generator=generator, dtype=torch.float32).to(device) for s in streams}
        return cls(start, per_stream)

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Noise:
        """The same noise restricted to a window (for running a sub-region on its own)."""
        return Noise(self.start[..., y0:y1, x0:x1], {k: v[..., y0:y1, x0:x1] for k, v in self.streams.items()})


def noise_coefficients(timestep: torch.Tensor, alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(ᾱ_t), sqrt(1 − ᾱ_t))`` as 0-d float32 tensors on ``alphas_cumprod``'s device (no host sync:
    ᾱ is gathered with ``index_select``; indexing with a 0-d device tensor would call ``.item()``)."""
    alphas = alphas_cumprod.to(torch.float32)
    a = alphas.index_select(0, timestep.reshape(-1).long().to(alphas.device)).reshape(())
    return a.sqrt(), (1.0 - a).sqrt()


def noised(latent: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt(ᾱ_t)·latent + sqrt(1-ᾱ_t)·noise`` — the UNet's input convention at ``timestep`` (float32).

    ``timestep`` is a 0-d tensor (or ``[B]``, one per row). ᾱ is gathered with ``index_select``: indexing
    with a 0-d device tensor would call ``.item()``, a host synchronisation in the step loop.
    """
    alphas = alphas_cumprod.to(latent.device, torch.float32)  # no copy when already there
    a = alphas.index_select(0, timestep.reshape(-1).long().to(alphas.device))
    a = a.reshape(()) if a.numel() == 1 else a.reshape(-1, *([1] * (latent.dim() - 1)))
    return a.sqrt() * latent + (1.0 - a).sqrt() * noise
