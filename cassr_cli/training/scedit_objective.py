"""The training objective of the SCEdit tuner (stage-1 activation): the base model's own diffusion loss
on HR latents, with the UNet's skip connections tuned by the up-sampled LR image.

For a clean HR crop ``x`` with LR input ``y`` (both ``[B, 3, ·, ·]`` in [0, 1]):

* ``z0 = E(x)`` (VAE posterior mean × scaling factor, as :func:`cassr_cli.engine.vae_tiling.encode_tiled`);
* the condition is ``up(y)``: ``y`` resized (bicubic) to the HR size, the image the tuner sees at
  inference;
* ``z_t = noised(z0, ε, t)`` with ``t`` uniform per sample;
* loss: MSE between the tuned UNet's prediction and the target of the scheduler's parameterisation
  (``ε`` or ``v``).

Only the tuner (SC-Tuners and condition encoder) receives gradients; the UNet, VAE and text encoder are
frozen. No activation model is involved: the tuner is the activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cassr_cli.engine.activation import resize_image
from cassr_cli.training.objective import FrozenModels, NoiseSchedule, draw_noise


@dataclass
class ConditionedInputs:
    """One micro-batch of the tuner's loss, on the training device (float32).

    Attributes:
        latents: ``z0`` ``[B, 4, h, w]``.
        condition: ``up(y)`` ``[B, 3, f·h, f·w]`` in [0, 1].
        timesteps: ``[B]`` int64 training timesteps.
        noise: ``[B, 4, h, w]``.
    """

    latents: torch.Tensor
    condition: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


@torch.no_grad()
def conditioned_inputs(
    frozen: FrozenModels,
    hr: torch.Tensor,
    lr: torch.Tensor,
    timestep_range: tuple[int, int],
    generator: torch.Generator,
) -> ConditionedInputs:
    """Latents, condition and noise for HR crops ``[B, 3, H, W]`` and LR crops ``[B, 3, H/s, W/s]`` on the
    device. Noise and timesteps are drawn like the adapter's (:func:`draw_noise`, no guidance streams)."""
    height, width = hr.shape[-2:]
    latents = frozen.encode(hr)
    condition = resize_image(lr, height, width)
    timesteps, noise, _ = draw_noise(latents, (), timestep_range, generator)
    return ConditionedInputs(latents, condition, timesteps, noise)


def conditioned_loss(model: nn.Module, schedule: NoiseSchedule, inputs: ConditionedInputs, text: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE ``[B]`` (float32) of ``model`` (a :class:`~cassr_cli.models.scedit.TunedUNet`,
    possibly wrapped by accelerate) on ``inputs``; ``text`` is the prompt embedding ``[1, 77, D]``."""
    n = inputs.latents.shape[0]
    noisy = schedule.add_noise(inputs.latents, inputs.noise, inputs.timesteps)
    prediction = model(noisy, inputs.timesteps, text.expand(n, -1, -1), inputs.condition).float()
    target = schedule.target(inputs.latents, inputs.noise, inputs.timesteps)
    return F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
