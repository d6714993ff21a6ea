"""Part 2: the text encoder and tokenizer (built once, seeded), then the ``UNet2DConditionModel`` trained
as a latent diffusion model, following diffusers' ``train_text_to_image`` conventions:

* latents: posterior *samples* × scaling factor of random ``latent_crop``² windows of the training
  images' latents (encoded once by the ``vae`` part, whole image and its mirror image, with the shipped
  fp16 VAE);
* noise schedule: ``DDPMScheduler`` from SD 2.1-base's config (scaled-linear betas 0.00085–0.012, 1000
  steps), timesteps uniform, target ε (SD 2.1-base's parameterisation);
* loss: MSE with min-SNR-γ weighting (``diffusers.training_utils.compute_snr``), AdamW, warm-up + cosine;
* EMA of the weights (``diffusers.training_utils.EMAModel``); the EMA weights are what is exported;
* conditioning: the empty-prompt encoding of the (frozen, seeded random) text encoder — the only text the
  engine ever feeds the guidance rows, and its default prompt.

Output: ``base/unet/``, ``base/text_encoder/``, ``base/tokenizer/`` (fp16 variants where weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cassr_cli.testing.miniature.models import (
    build_text_encoder,
    build_unet,
    empty_prompt_embedding,
    load_text,
    load_vae,
    save_fp16,
    save_text_encoder_fp16,
    write_clip_tokenizer,
)
from cassr_cli.testing.miniature.spec import RecipeSpec
from cassr_cli.testing.miniature.state import Part, note, progress_bar, warmup_cosine
from cassr_cli.testing.miniature.vae_part import LATENTS_FILE, load_latents
from cassr_cli.testing.tiny_weights import SD21_SCHEDULER
from cassr_cli.training.data import generator_for


def write_text_parts(spec: RecipeSpec, base: Path, bpe_file: Path) -> None:
    """``base/text_encoder`` (seeded random init, fp16) and ``base/tokenizer`` (the real CLIP BPE)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_for(spec.seed, "miniature", "text-init").initial_seed())
        encoder = build_text_encoder(spec.text)
    save_text_encoder_fp16(encoder, base / "text_encoder")
    write_clip_tokenizer(bpe_file, base / "tokenizer")


def ddpm_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config({k: v for k, v in SD21_SCHEDULER.items() if not k.startswith("_")})


def latent_batch(latents: list[tuple[torch.Tensor, torch.Tensor]], spec: RecipeSpec, step: int, scale: float, *, part: str = "unet") -> torch.Tensor:
    """``[batch, 4, c, c]``: scaled posterior samples of random windows, from the generator of the step."""
    u = spec.unet
    generator = generator_for(spec.seed, "miniature", part, step)
    rows = []
    for _ in range(u.batch):
        mean, std = latents[int(torch.randint(len(latents), (1,), generator=generator))]
        h, w = mean.shape[-2:]
        y = int(torch.randint(h - u.latent_crop + 1, (1,), generator=generator))
        x = int(torch.randint(w - u.latent_crop + 1, (1,), generator=generator))
        window = (slice(None), slice(y, y + u.latent_crop), slice(x, x + u.latent_crop))
        eps = torch.randn(mean[window].shape, generator=generator)
        rows.append((mean[window] + std[window] * eps) * scale)
    return torch.stack(rows)


def snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min-SNR-γ loss weights for an ε target: ``min(SNR_t, γ) / SNR_t``."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    return torch.clamp(snr, max=gamma) / snr


def train_unet(spec: RecipeSpec, vae_folder: Path, part: Part, base: Path, bpe_file: Path) -> dict[str, Any]:
    """Write the text parts, train the UNet on the latents the ``vae`` part cached in ``vae_folder`` and
    export its EMA weights to ``base/unet``."""
    from diffusers.training_utils import EMAModel

    u = spec.unet
    if not (base / "text_encoder").is_dir() or not (base / "tokenizer" / "vocab.json").is_file():
        write_text_parts(spec, base, bpe_file)
    encoder, tokenizer = load_text(base)
    text = empty_prompt_embedding(encoder, tokenizer)
    latents = load_latents(vae_folder)
    scale = float(load_vae(base).config.scaling_factor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_for(spec.seed, "miniature", "unet-init").initial_seed())
        unet = build_unet(u, cross_attention_dim=spec.text.hidden_size)
    scheduler = ddpm_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=u.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(u.warmup, u.steps))
    ema = EMAModel(unet.parameters(), decay=u.ema_decay)
    start, losses = 0, []
    state = part.load_checkpoint()
    if state is not None:
        unet.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema.load_state_dict(state["ema"])
        start, losses = int(state["step"]), list(state["losses"])
        note(f"unet: resuming at step {start}")
    unet.train()
    train_steps = int(scheduler.config.num_train_timesteps)
    bar = progress_bar(u.steps, start, "unet")
    for step in range(start, u.steps):
        z0 = latent_batch(latents, spec, step, scale)
        generator = generator_for(spec.seed, "miniature", "unet-noise", step)
        noise = torch.randn(z0.shape, generator=generator)
        timesteps = torch.randint(0, train_steps, (u.batch,), generator=generator)
        noisy = scheduler.add_noise(z0, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text.expand(u.batch, -1, -1)).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * snr_weights(scheduler, timesteps, u.snr_gamma)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        losses.append(per_sample.mean().item())
        bar.update(1)
        bar.set_postfix(mse=f"{losses[-1]:.4f}", refresh=False)
        done = step + 1
        if done % u.checkpoint_every == 0 and done < u.steps:
            part.save_checkpoint(
                {
                    "model": unet.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "ema": ema.state_dict(), "step": done, "losses": losses,
                }
            )
    bar.close()
    ema.copy_to(unet.parameters())
    unet.eval()
    save_fp16(unet, base / "unet")
    (vae_folder / LATENTS_FILE).unlink(missing_ok=True)
    return part.finish({"steps": u.steps, "mse_first_100": _mean(losses[:100]), "mse_last_100": _mean(losses[-100:])})


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")
