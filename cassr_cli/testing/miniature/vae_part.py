"""Part 1: the ``AutoencoderKL`` (×4, 4 latent channels), trained from scratch on random HR crops.

Loss per sample (SD's first-stage weighting without the perceptual and GAN terms): the L1 reconstruction
error summed over pixels plus ``kl_weight`` × the KL divergence of the posterior summed over latent
elements; the decoder sees a posterior *sample*. The latent scale is set as SD set its 0.18215: the
reciprocal of the standard deviation of posterior samples, here over all training images (and their
mirror images), encoded whole with the fp16-rounded weights that are shipped; those latents are kept
for the ``unet`` part. Output: ``base/vae/`` (fp16 variant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cassr_cli.testing.miniature.data import random_crops, to_unit
from cassr_cli.testing.miniature.models import build_vae, load_vae, save_fp16
from cassr_cli.testing.miniature.spec import RecipeSpec
from cassr_cli.testing.miniature.state import Part, note, progress_bar, warmup_cosine
from cassr_cli.training.data import generator_for

QUICK_CROP = 128
LATENTS_FILE = "latents.pt"
"""Posterior mean and std of every training image and its mirror image, for the ``unet`` part."""
FACTOR_MULTIPLE = 4
"""Whole images are cropped to a multiple of the VAE's down-sampling factor before encoding."""


def train_vae(
    spec: RecipeSpec, train_images: list[torch.Tensor], validation_images: list[torch.Tensor], part: Part, base: Path
) -> dict[str, Any]:
    """Train, set the latent scale and export to ``base/vae``; returns the part's record (with a PSNR
    curve on central crops of the validation images, measured at every checkpoint)."""
    s = spec.vae
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_for(spec.seed, "miniature", "vae-init").initial_seed())
        vae = build_vae(s)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=s.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(s.warmup, s.steps))
    start, losses, curve = 0, [], []
    validation_crops = [centre_crop(image, QUICK_CROP) for image in validation_images]
    state = part.load_checkpoint()
    if state is not None:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, losses, curve = int(state["step"]), list(state["losses"]), [list(c) for c in state["curve"]]
        note(f"vae: resuming at step {start}")
    vae.train()
    pixels = 3 * s.crop * s.crop
    bar = progress_bar(s.steps, start, "vae")
    for step in range(start, s.steps):
        x = to_unit(random_crops(train_images, s.batch, s.crop, spec.seed, "vae", step))
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=generator_for(spec.seed, "miniature", "vae-noise", step))
        y = vae.decode(z).sample
        rec = (y - x).abs().sum() / s.batch
        kl = posterior.kl().sum() / s.batch
        loss = (rec + s.kl_weight * kl) / pixels
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(l1=f"{rec.item() / pixels:.4f}", refresh=False)
        done = step + 1
        if done % s.checkpoint_every == 0 and done < s.steps:
            curve.append([done, quick_psnr(vae, validation_crops)])
            bar.set_postfix(l1=f"{rec.item() / pixels:.4f}", val_psnr=f"{curve[-1][1]:.2f}")
            vae.train()
            part.save_checkpoint(
                {
                    "model": vae.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "step": done, "losses": losses, "curve": curve,
                }
            )
    bar.close()
    vae.eval()
    save_fp16(vae, base / "vae")  # the shipped weights; latents and the latent scale come from them
    shipped = load_vae(base)
    latents = encode_latents(shipped, train_images)
    torch.save([list(pair) for pair in latents], part.folder / LATENTS_FILE)
    scale = latent_scale(latents, spec.seed)
    vae.register_to_config(scaling_factor=scale)
    save_fp16(vae, base / "vae")
    note(f"vae: latent std {1 / scale:.4f} → scaling_factor {scale:.5f}")
    curve.append([s.steps, quick_psnr(shipped, validation_crops)])
    return part.finish(
        {
            "steps": s.steps, "scaling_factor": scale, "loss_first_100": _mean(losses[:100]), "loss_last_100": _mean(losses[-100:]),
            "validation_centre_crop_psnr_curve": curve,
        }
    )


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    y, x = (h - size) // 2, (w - size) // 2
    return image[..., y : y + size, x : x + size]


@torch.no_grad()
def quick_psnr(vae: Any, crops: list[torch.Tensor]) -> float:
    """Mean RGB PSNR (dB) of encode(mean) → decode over uint8 ``crops`` (a cheap progress measure)."""
    vae.eval()
    x = to_unit(torch.stack(crops))
    out = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((out - x) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1 / mse)).mean())


def crop_to_factor(image: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` cropped (bottom/right) to multiples of the VAE factor."""
    h, w = image.shape[-2:]
    return image[..., : h - h % FACTOR_MULTIPLE, : w - w % FACTOR_MULTIPLE]


@torch.no_grad()
def encode_latents(vae: Any, images: list[torch.Tensor], *, mirror: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Posterior mean and std ``[4, H/4, W/4]`` (unscaled) of every whole image (and of its mirror image)."""
    out = []
    for image in images:
        x = to_unit(crop_to_factor(image))[None]
        for view in (x, x.flip(-1)) if mirror else (x,):
            dist = vae.encode(view).latent_dist
            out.append((dist.mean[0].clone(), dist.std[0].clone()))
    return out


def load_latents(part_folder: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training latents the ``vae`` part cached."""
    return [tuple(pair) for pair in torch.load(part_folder / LATENTS_FILE, weights_only=True)]  # type: ignore[misc]


def latent_scale(latents: list[tuple[torch.Tensor, torch.Tensor]], seed: int) -> float:
    """``1 / std`` of one posterior sample of every cached latent (as SD set its 0.18215)."""
    total, total_sq, count = 0.0, 0.0, 0
    for index, (mean, std) in enumerate(latents):
        eps = torch.randn(mean.shape, generator=generator_for(seed, "miniature", "vae-scale", index))
        z = (mean + std * eps).double()
        total += float(z.sum())
        total_sq += float((z * z).sum())
        count += z.numel()
    mean = total / count
    std = (total_sq / count - mean * mean) ** 0.5
    return 1.0 / std


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")
