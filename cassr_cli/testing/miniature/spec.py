"""Every hyper-parameter of the miniature recipe, in one frozen dataclass.

:data:`FULL` is the shipped recipe; :data:`SMOKE` is the same pipeline with a handful of steps (tests and
a quick check that a machine can run it). The sizes are chosen for the ≤ 20 MB weight budget of
``weights/miniature/`` (fp16 files) and the ≤ 90 minute CPU budget of the whole recipe
(docs/decisions.md, "The miniature").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class VaeSpec:
    """``AutoencoderKL`` training: random ``crop``² HR crops, L1 + KL (SD's weighting), AdamW, cosine."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    steps: int = 3000
    batch: int = 16
    crop: int = 64
    learning_rate: float = 1e-3
    warmup: int = 100
    kl_weight: float = 1e-6
    checkpoint_every: int = 250


@dataclass(frozen=True)
class TextSpec:
    """The small ``CLIPTextModel`` (seeded random init; the UNet only ever sees its empty-prompt encoding)."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_attention_heads: int = 4
    num_hidden_layers: int = 2


@dataclass(frozen=True)
class UnetSpec:
    """``UNet2DConditionModel`` training as a latent diffusion model (diffusers' train_text_to_image
    conventions: DDPM noise schedule of SD 2.1-base, epsilon target, min-SNR-γ weighting, EMA)."""

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_heads: int = 8
    norm_num_groups: int = 16
    steps: int = 3000
    batch: int = 32
    latent_crop: int = 16
    learning_rate: float = 5e-4
    warmup: int = 100
    snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 200


@dataclass(frozen=True)
class AdapterSpec:
    """The multi-attention adapter, trained by ``cassr train`` (its config keys)."""

    rank: int = 4
    steps: int = 600
    batch: int = 8
    crop: int = 64
    learning_rate: float = 1e-3
    warmup: int = 20
    ema_decay: float = 0.99
    guidance_timestep: int = 200
    checkpoint_every: int = 100


@dataclass(frozen=True)
class RecipeSpec:
    """The whole recipe. ``seed`` seeds every random draw (initialisations, crops, noise, degradations)."""

    seed: int = 0
    vae: VaeSpec = VaeSpec()
    text: TextSpec = TextSpec()
    unet: UnetSpec = UnetSpec()
    adapter: AdapterSpec = AdapterSpec()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = RecipeSpec()
SMOKE = RecipeSpec(
    vae=replace(VaeSpec(), steps=4, batch=2, warmup=1, checkpoint_every=2),
    unet=replace(UnetSpec(), steps=4, batch=2, warmup=1, checkpoint_every=2),
    adapter=replace(AdapterSpec(), steps=2, batch=1, warmup=1, checkpoint_every=1),
)
