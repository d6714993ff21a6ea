"""The training objective of the multi-attention adapter: the base model's own diffusion loss, with the
UNet guided exactly as the ``cached`` inference mode guides it.

For a clean HR crop ``x`` with LR input ``y`` (both ``[B, 3, ·, ·]`` in [0, 1]):

* ``x_ref = A(y)`` resized to the HR size (the frozen activation model), ``up = bicubic(y)``;
* ``z0 = E(x)``, ``g_ref = E(x_ref)``, ``g_lr = E(up)`` (VAE posterior means × scaling factor, the
  convention of :func:`cassr_cli.engine.vae_tiling.encode_tiled`);
* main rows: ``z_t = noised(z0, ε, t)`` with ``t`` uniform per sample; guidance rows: ``g_s`` noised to
  the adapter's fixed ``t_g`` with their own noise — what the cached guidance pass does at inference;
* loss: MSE between the UNet's prediction on the main rows and the target of the scheduler's
  parameterisation (``ε`` for ``epsilon``, ``v = √ᾱ·ε − √(1−ᾱ)·z0`` for ``v_prediction``).

Only the adapter (LoRA deltas on the guidance K/V, per-stream logit biases) receives gradients.
:class:`GuidedUNet` runs the UNet in one of two equivalent layouts (``guidance_pass``), both through the
inference engine's guidance bank and passes (``engine/guidance.py``):

* ``batched``: one call with ``[main rows ; guidance rows]`` and per-row timesteps (``t_i`` and ``t_g``),
  a :class:`~cassr_cli.engine.guidance.JointPass`;
* ``separate`` (default): a :class:`~cassr_cli.engine.guidance.WritePass` on the guidance rows at ``t_g``
  leaves their K/V (with the adapter's deltas, still attached to the autograd graph) in a
  :class:`~cassr_cli.engine.guidance.TileBank`, which a :class:`~cassr_cli.engine.guidance.ReadPass` on the
  main rows reads — what cached inference does. Same values; the backward pass then runs through the main
  rows only. Measured on SD 2.1-base at a 64² latent with
  ``torch.utils.flop_counter``: backward 1.45 instead of 3.18 TFLOP per sample, and the guidance rows keep
  no activations (docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cassr_cli.engine.activation import resize_image
from cassr_cli.engine.attention import install_processors, restore_processors
from cassr_cli.engine.guidance import BankSlot, JointPass, ReadPass, ScratchBank, TileBank, WritePass
from cassr_cli.engine.sampling import noised

GuidancePass = Literal["batched", "separate"]


@dataclass(frozen=True)
class NoiseSchedule:
    """The base model's training noise schedule and parameterisation.

    Attributes:
        alphas_cumprod: ``ᾱ_t`` ``[T]`` float32 on the training device.
        prediction_type: ``epsilon`` or ``v_prediction`` (from the model's scheduler config).
    """

    alphas_cumprod: torch.Tensor
    prediction_type: str

    @classmethod
    def from_config(cls, scheduler_config: Mapping[str, Any], device: torch.device) -> NoiseSchedule:
        from diffusers import DDPMScheduler

        config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        scheduler = DDPMScheduler.from_config(config)
        kind = str(config.get("prediction_type", "epsilon"))
        if kind not in ("epsilon", "v_prediction"):
            raise ValueError(f"cannot train for prediction_type {kind!r} (epsilon and v_prediction are supported)")
        return cls(scheduler.alphas_cumprod.to(device, torch.float32), kind)

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def add_noise(self, latent: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``noised`` per row: ``latent``/``noise`` ``[B, C, h, w]``, ``timesteps`` ``[B]``."""
        return torch.cat([noised(latent[i : i + 1], noise[i : i + 1], timesteps[i], self.alphas_cumprod) for i in range(len(latent))])

    def target(self, latent: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet should predict for ``add_noise(latent, noise, timesteps)`` (float32)."""
        if self.prediction_type == "epsilon":
            return noise
        a = self.alphas_cumprod[timesteps.long()].view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1.0 - a).sqrt() * latent


@dataclass
class StepInputs:
    """Everything one micro-batch's loss needs, on the training device (float32).

    Attributes:
        latents: ``z0`` ``[B, 4, h, w]``.
        guides: ``{stream: g_s [B, 4, h, w]}``.
        timesteps: ``[B]`` int64 training timesteps.
        noise: ``[B, 4, h, w]`` noise of the main rows; guide_noise: ``{stream: [B, 4, h, w]}``.
    """

    latents: torch.Tensor
    guides: dict[str, torch.Tensor]
    timesteps: torch.Tensor
    noise: torch.Tensor
    guide_noise: dict[str, torch.Tensor]


def draw_noise(
    latents: torch.Tensor,
    streams: tuple[str, ...],
    timestep_range: tuple[int, int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Timesteps ``[B]``, main noise and per-stream noise, drawn on the CPU from ``generator`` (values do
    not depend on the device) and moved to ``latents``' device."""
    device = latents.device
    shape = tuple(latents.shape)
    timesteps = torch.randint(timestep_range[0], timestep_range[1] + 1, (shape[0],), generator=generator)
    noise = torch.randn(shape, generator=generator)
    guide_noise = {s: torch.randn(shape, generator=generator).to(device) for s in streams}
    return timesteps.to(device), noise.to(device), guide_noise


class FrozenModels:
    """The frozen parts used to build training inputs: activation model, VAE, text embedding.

    Args:
        base: the loaded base model (:func:`cassr_cli.engine.base_model.load_base_model`).
        activation: the stage-1 model (:class:`cassr_cli.engine.activation.ActivationStage`).
        text: prompt embedding ``[1, 77, D]`` on the device (a normal tensor, not an inference tensor).
    """

    def __init__(self, base: Any, activation: Any, text: torch.Tensor) -> None:
        self.base, self.activation, self.text = base, activation, text

    @torch.no_grad()
    def reference(self, lr: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``x_ref`` ``[B, 3, height, width]`` float32 in [0, 1] from LR crops ``[B, 3, h, w]`` (device).

        The crops are single tiles of the inference activation stage, so one batched call of its model
        gives what :class:`ActivationStage` computes for them."""
        native = self.activation.model(lr.to(self.activation.dtype)).float()
        return resize_image(native, height, width).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents ``[B, 4, H/8, W/8]`` float32 of ``pixels`` ``[B, 3, H, W]`` in [0, 1]."""
        vae = self.base.vae
        dtype = next(vae.parameters()).dtype
        latent = vae.encode(pixels.to(dtype) * 2.0 - 1.0).latent_dist.mean
        return latent.float() * float(vae.config.scaling_factor)

    @torch.no_grad()
    def inputs(
        self,
        hr: torch.Tensor,
        lr: torch.Tensor,
        streams: tuple[str, ...],
        timestep_range: tuple[int, int],
        generator: torch.Generator,
    ) -> StepInputs:
        """Latents, guidance latents and noise for HR/LR crops on the device."""
        height, width = hr.shape[-2:]
        latents = self.encode(hr)
        guides = {}
        if "ref" in streams:
            guides["ref"] = self.encode(self.reference(lr, height, width))
        if "lr" in streams:
            guides["lr"] = self.encode(resize_image(lr, height, width))
        timesteps, noise, guide_noise = draw_noise(latents, streams, timestep_range, generator)
        return StepInputs(latents, guides, timesteps, noise, guide_noise)


class GuidedUNet(nn.Module):
    """The frozen UNet with multi-attention processors holding the trainable adapter, as one module
    (what ``accelerator.prepare`` wraps; under DDP only the adapter's parameters are synchronised).

    Args:
        unet: frozen ``UNet2DConditionModel``.
        adapter: the :class:`~cassr_cli.models.adapter.MultiAttentionAdapter` being trained (fp32).
        streams: guidance streams, in row order.
        guidance_timestep: ``t_g``.
        guidance_pass: ``separate`` or ``batched`` (module docstring).
        guide_text: embedding ``[1, 77, D]`` for the guidance rows; inference gives them the empty
            prompt whatever the main rows' prompt is, so pass the empty prompt's embedding when training
            with a prompt (None: the guidance rows use the main rows' embedding).
    """

    def __init__(
        self,
        unet: nn.Module,
        adapter: nn.Module,
        streams: tuple[str, ...],
        guidance_timestep: int,
        guidance_pass: GuidancePass = "separate",
        guide_text: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        self.streams = tuple(streams)
        self.guidance_timestep = guidance_timestep
        self.guidance_pass = guidance_pass
        self.guide_text = guide_text
        self._previous = install_processors(unet, adapter)  # type: ignore[arg-type]

    def close(self) -> None:
        """Give the UNet its original attention processors back."""
        restore_processors(self.unet, self._previous)

    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, guides_t: Mapping[str, torch.Tensor], text: torch.Tensor
    ) -> torch.Tensor:
        """Predictions ``[B, 4, h, w]`` float32 for main rows ``noisy`` at ``timesteps`` ``[B]``, guided by
        ``guides_t`` (``{stream: [B, 4, h, w]}``, already noised to ``t_g``); ``text`` ``[1, 77, D]``."""
        unet = self.unet
        dtype = next(unet.parameters()).dtype
        n = noisy.shape[0]
        weights = (0.0,) * len(self.streams)
        guide_rows = torch.cat([guides_t[s] for s in self.streams]).to(dtype)
        guide_text = self.guide_text if self.guide_text is not None else text
        t_g = torch.full((guide_rows.shape[0],), self.guidance_timestep, device=noisy.device, dtype=timesteps.dtype)
        if self.guidance_pass == "batched":
            view = ScratchBank().view(BankSlot(0), noisy.device)
            joint = JointPass(view, self.streams, n, weights)
            sample = torch.cat([noisy.to(dtype), guide_rows])
            emb = torch.cat([text.expand(n, -1, -1), guide_text.expand(guide_rows.shape[0], -1, -1)])
            out = unet(sample, torch.cat([timesteps, t_g]), encoder_hidden_states=emb, cross_attention_kwargs={"guidance": joint}).sample
            return out[:n].float()
        view = TileBank().view(BankSlot(0), noisy.device)
        with _checkpointing_off(unet):  # the guidance rows keep no activations worth recomputing
            write = WritePass(view, self.streams, n)
            unet(guide_rows, t_g, encoder_hidden_states=guide_text.expand(guide_rows.shape[0], -1, -1), cross_attention_kwargs={"guidance": write})
        read = ReadPass(view, self.streams, n, weights)
        out = unet(noisy.to(dtype), timesteps, encoder_hidden_states=text.expand(n, -1, -1), cross_attention_kwargs={"guidance": read}).sample
        return out.float()


@contextmanager
def _checkpointing_off(unet: Any) -> Iterator[None]:
    enabled = bool(getattr(unet, "is_gradient_checkpointing", False))
    if enabled:
        unet.disable_gradient_checkpointing()
    try:
        yield
    finally:
        if enabled:
            unet.enable_gradient_checkpointing()


def diffusion_loss(model: nn.Module, schedule: NoiseSchedule, inputs: StepInputs, text: torch.Tensor, streams: tuple[str, ...]) -> torch.Tensor:
    """Per-sample MSE ``[B]`` (float32) of ``model`` (a :class:`GuidedUNet`, possibly wrapped by
    accelerate) on ``inputs``."""
    t_g = _guidance_timestep(model)
    noisy = schedule.add_noise(inputs.latents, inputs.noise, inputs.timesteps)
    t_rows = torch.full((inputs.latents.shape[0],), t_g, device=inputs.timesteps.device, dtype=inputs.timesteps.dtype)
    guides_t = {s: schedule.add_noise(inputs.guides[s], inputs.guide_noise[s], t_rows) for s in streams}
    prediction = model(noisy, inputs.timesteps, guides_t, text)
    target = schedule.target(inputs.latents, inputs.noise, inputs.timesteps)
    return F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))


def _guidance_timestep(model: nn.Module) -> int:
    inner = getattr(model, "module", model)  # DDP / accelerate wrappers keep the module here
    return int(inner.guidance_timestep)
