"""Part 4: measurements, all from the exported files (what ships), on the validation split.

* VAE: reconstruction PSNR (RGB and BT.601 Y, 8-bit outputs, whole images cropped to a multiple of 4,
  posterior mean) on the validation images and the first 20 training images.
* UNet: ε-MSE of the exported EMA weights at fixed timesteps on fixed latent windows of the validation
  and the training images (same draws for both; predicting zeros scores 1.0).
* Adapter: the diffusion loss of ``cassr train``'s own objective on held-out crops of the validation
  images (fixed crops, degradations, timesteps and noise), untrained (= zero-shot) vs trained, paired.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cassr_cli.testing.miniature.data import to_unit
from cassr_cli.testing.miniature.models import empty_prompt_embedding, load_text, load_unet, load_vae
from cassr_cli.testing.miniature.spec import RecipeSpec
from cassr_cli.testing.miniature.state import Part, note
from cassr_cli.testing.miniature.unet_part import ddpm_scheduler, latent_batch
from cassr_cli.testing.miniature.vae_part import crop_to_factor, encode_latents
from cassr_cli.training.data import generator_for

UNET_TIMESTEPS = (50, 200, 500, 800)
UNET_BATCHES = 8
ADAPTER_BATCHES = 16
TRAIN_SUBSET = 20
"""Training-set measurements use the first 20 training images (for comparison with the 20 held out)."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(F.mse_loss(a.double(), b.double()))
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 Y (studio range, in [0, 1]) of ``[..., 3, H, W]`` RGB in [0, 1], the SR literature's Y."""
    r, g, b = rgb.unbind(-3)
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


@torch.no_grad()
def vae_psnr(base: Path, images: list[torch.Tensor]) -> dict[str, float]:
    """Mean RGB and Y PSNR of encode(mean) → decode → 8-bit, over ``images``."""
    vae = load_vae(base)
    rgb, y = [], []
    for image in images:
        original = crop_to_factor(image)
        x = to_unit(original)[None]
        out = vae.decode(vae.encode(x).latent_dist.mean).sample
        decoded = ((out[0].clamp(-1, 1) + 1) * 127.5).round() / 255.0
        reference = original.double() / 255.0
        rgb.append(psnr(decoded, reference))
        y.append(psnr(luma(decoded.double()), luma(reference)))
    return {"psnr_rgb": sum(rgb) / len(rgb), "psnr_y": sum(y) / len(y), "images": len(images)}


@torch.no_grad()
def unet_mse(spec: RecipeSpec, base: Path, images: list[torch.Tensor], what: str) -> dict[str, float]:
    """ε-MSE of the exported UNet at :data:`UNET_TIMESTEPS` on fixed windows of ``images``' latents."""
    unet = load_unet(base)
    encoder, tokenizer = load_text(base)
    text = empty_prompt_embedding(encoder, tokenizer)
    scale = float(load_vae(base).config.scaling_factor)
    latents = encode_latents(load_vae(base), images, mirror=False)
    scheduler = ddpm_scheduler()
    out = {}
    for t in UNET_TIMESTEPS:
        errors = []
        for k in range(UNET_BATCHES):
            z0 = latent_batch(latents, spec, k, scale, part=f"eval-{what}")
            noise = torch.randn(z0.shape, generator=generator_for(spec.seed, "miniature", "eval-noise", k))
            timesteps = torch.full((z0.shape[0],), t)
            prediction = unet(scheduler.add_noise(z0, noise, timesteps), timesteps, encoder_hidden_states=text.expand(len(z0), -1, -1)).sample
            errors.append(F.mse_loss(prediction, noise).item())
        out[f"t{t}"] = sum(errors) / len(errors)
    return out


def adapter_heldout(config: Any, adapter_file: Path, validation: tuple[Path, ...], seed: int) -> dict[str, Any]:
    """Paired held-out diffusion loss of the untrained and the trained adapter (``cassr train``'s loss)."""
    from cassr_cli.engine.base_model import quiet_loading
    from cassr_cli.models.adapter import MultiAttentionAdapter
    from cassr_cli.training.data import CropDataset, TrainingImage, degrade_batch
    from cassr_cli.training.loop import Trainer

    with quiet_loading():
        trainer = Trainer(config)
    try:
        dataset = CropDataset([TrainingImage(p) for p in validation], config.data, seed)
        size = config.train.batch_size
        batches = []
        for k in range(ADAPTER_BATCHES):
            raw = [dataset[k * size + j] for j in range(size)]
            batch = {key: torch.stack([r[key] for r in raw]) for key in ("hr", "lr", "paired")}
            hr, lr = degrade_batch(batch, config.degradation, generator_for(seed, "miniature-heldout-degrade", k), trainer.device)
            batches.append(trainer.frozen.inputs(hr, lr, trainer.streams, config.train.timestep_range, generator_for(seed, "miniature-heldout-noise", k)))
        untrained = {k: torch.zeros_like(v) if k.endswith(".up") or k.endswith(".bias") else v.clone() for k, v in trainer.adapter.state_dict().items()}
        trainer.adapter.load_state_dict(untrained)
        zero_shot = torch.cat([trainer.evaluate(b).cpu() for b in batches])
        trained, _ = MultiAttentionAdapter.load(adapter_file)
        trainer.adapter.load_state_dict(trained.state_dict())
        adapted = torch.cat([trainer.evaluate(b).cpu() for b in batches])
    finally:
        trainer.close()
    diff = adapted - zero_shot
    n = len(diff)
    return {
        "samples": n,
        "zero_shot_loss": float(zero_shot.mean()),
        "trained_loss": float(adapted.mean()),
        "paired_difference": float(diff.mean()),
        "paired_difference_stderr": float(diff.std() / math.sqrt(n)) if n > 1 else 0.0,
        "samples_better": int((diff < 0).sum()),
    }


def evaluate(
    spec: RecipeSpec, part: Part, base: Path, adapter_file: Path, adapter_config: Any,
    train_images: list[torch.Tensor], validation_images: list[torch.Tensor], validation_files: tuple[Path, ...],
) -> dict[str, Any]:
    """All measurements (module docstring); returns the part's record."""
    record: dict[str, Any] = {}
    record["vae_validation"] = vae_psnr(base, validation_images)
    record["vae_train"] = vae_psnr(base, train_images[:TRAIN_SUBSET])
    note(f"vae PSNR: validation {record['vae_validation']['psnr_rgb']:.2f} dB RGB / {record['vae_validation']['psnr_y']:.2f} dB Y")
    record["unet_eps_mse_validation"] = unet_mse(spec, base, validation_images, "validation")
    record["unet_eps_mse_train"] = unet_mse(spec, base, train_images[:TRAIN_SUBSET], "train")
    note(f"unet ε-MSE (validation): {record['unet_eps_mse_validation']}")
    record["adapter_heldout"] = adapter_heldout(adapter_config, adapter_file, validation_files, spec.seed)
    note(f"adapter held-out loss: {record['adapter_heldout']}")
    return part.finish(record)
