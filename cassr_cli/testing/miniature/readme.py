"""DEST/README.md of the shipped miniature, rendered from the recipe's ``report.json`` and the shipped
files (their sizes and sha256), so the numbers in it are the ones the recipe measured."""

from __future__ import annotations

from typing import Any

PART_TITLES = {
    "vae": "1. VAE (incl. encoding the training latents)",
    "unet": "2. text encoder + tokenizer, UNet",
    "adapter": "3. adapter (`cassr train`)",
    "evaluate": "measurements",
}


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def render_readme(report: dict[str, Any], files: list[tuple[str, int, str]]) -> str:
    """The README text. ``files``: ``(relative path, bytes, sha256)`` of every shipped file."""
    spec, parts, env = report["spec"], report["parts"], report["environment"]
    ev = parts["evaluate"]
    vae_val, vae_train = ev["vae_validation"], ev["vae_train"]
    held = ev["adapter_heldout"]
    total = sum(size for _, size, _ in files)
    params = report.get("parameters", {})
    lines = [
        "# The miniature: a small, really trained CasSR base model and adapter",
        "",
        "A latent diffusion model in exactly the diffusers Stable Diffusion 2.1-base layout, trained from scratch",
        "on a CPU on 80 natural photos, with a multi-attention adapter trained by `cassr train` on top. It is",
        "**not** Stable Diffusion and says nothing about SD's quality: it exists so that stage 2 can be measured",
        "with weights that have learned something, and so that CI fails when stage-2 numerics change",
        "(`tests/quality/test_miniature_gate.py`).",
        "",
        "```",
        "cassr upscale in/ out/ --base-model weights/miniature/base --adapter weights/miniature/adapter.safetensors \\",
        "    --activation ../shared/weights/realesrgan/realesr-animevideov3.pth",
        "```",
        "",
        "## What is in it",
        "",
        "| part | class | size | parameters | file size |",
        "|---|---|---|---|---|",
        f"| `base/vae` | `AutoencoderKL` | ×4 down-sampling, 4 latent channels, channels {tuple(spec['vae']['block_out_channels'])}, "
        f"{spec['vae']['layers_per_block']} layer per block, `scaling_factor` {parts['vae']['scaling_factor']:.5f} | "
        f"{params.get('vae', 0) / 1e6:.2f} M | {_mb(_size(files, 'base/vae/'))} |",
        f"| `base/unet` | `UNet2DConditionModel` | channels {tuple(spec['unet']['block_out_channels'])}, "
        f"{spec['unet']['layers_per_block']} layer per block, {spec['unet']['attention_heads']} heads; self-attention at latent /1, /2 "
        f"(CrossAttn blocks) and /4 (mid block); cross-attention to the text encoding; ε-prediction | "
        f"{params.get('unet', 0) / 1e6:.2f} M | {_mb(_size(files, 'base/unet/'))} |",
        f"| `base/text_encoder` | `CLIPTextModel` | width {spec['text']['hidden_size']}, {spec['text']['num_hidden_layers']} layers, "
        f"the real CLIP vocabulary (49,408) | {params.get('text_encoder', 0) / 1e6:.2f} M | {_mb(_size(files, 'base/text_encoder/'))} |",
        f"| `base/tokenizer` | `CLIPTokenizer` | the real CLIP BPE tokenizer (SD 2.x padding `!`) | — | {_mb(_size(files, 'base/tokenizer/'))} |",
        "| `base/scheduler` | `DDIMScheduler` config | SD 2.1-base's: scaled-linear betas 0.00085–0.012, 1000 steps, epsilon | — | — |",
        f"| `adapter.safetensors` | multi-attention adapter | rank {spec['adapter']['rank']}, streams lr + ref, "
        f"`t_g` {spec['adapter']['guidance_timestep']}, fp32 | {params.get('adapter', 0) / 1e6:.3f} M | {_mb(_size(files, 'adapter.safetensors'))} |",
        "",
        f"Total: {_mb(total)} (the budget for everything in this folder is 20 MB). Weights are stored as",
        "`*.fp16.safetensors`, the layout of SD's fp16 download, which the engine loads into its compute dtype;",
        "every number below was measured on these fp16 files.",
        "",
        "The text encoder is **not trained**: it keeps its seeded random initialisation. The UNet was only ever",
        "trained on the encoding of the empty prompt (the only text stage 2 feeds the guidance rows, and its",
        "default prompt), so `--prompt` means nothing to this model.",
        "",
        "## How it was made",
        "",
        "From the repository root (the shared test data next to it):",
        "",
        "```",
        "python -m cassr_cli.testing.miniature train OUT_DIR             # resumable: run it again after an interruption",
        "python -m cassr_cli.testing.miniature ship OUT_DIR weights/miniature",
        "```",
        "",
        f"- **Seed** {spec['seed']}. Every random draw (initialisations, crops, flips, posterior samples, noise, timesteps,",
        "  degradations) comes from a generator seeded by (seed, part, step), so a resumed part continues as an",
        "  uninterrupted one would. Every hyper-parameter is in `cassr_cli/testing/miniature/spec.py`.",
        "- **Data**: the HR images of BSD100 ×4 (`../shared/testdata/bsd100_x4/img_NNN_SRF_4_HR.png`, Martin et al.,",
        "  ICCV 2001; the source states no licence). Fixed split: the 20 images whose number is divisible by 5 are",
        "  the validation split, the other 80 train. Set5 and Set14 are never used.",
        f"  Validation: {', '.join(name.split('_')[1] for name in report['split']['validation'])}.",
        f"- **VAE**: {spec['vae']['steps']} steps of AdamW (lr {spec['vae']['learning_rate']:g}, warm-up + cosine), batch "
        f"{spec['vae']['batch']} random {spec['vae']['crop']}² crops with flips; loss = L1 summed over pixels + "
        f"{spec['vae']['kl_weight']:g} × KL (SD's first-stage weighting, without the perceptual and GAN terms); the decoder",
        "  sees posterior samples. `scaling_factor` = 1 / std of posterior samples of all training images (as SD set",
        "  0.18215), measured with the fp16 weights.",
        f"- **UNet**: {spec['unet']['steps']} steps of AdamW (lr {spec['unet']['learning_rate']:g}, warm-up + cosine), batch "
        f"{spec['unet']['batch']} random {spec['unet']['latent_crop']}² windows of the training latents (posterior samples ×",
        "  scaling factor, images and their mirror images), DDPM noise with SD 2.1-base's schedule, ε target, min-SNR-5",
        f"  loss weighting, EMA {spec['unet']['ema_decay']} (`diffusers.training_utils.EMAModel`; the EMA weights ship), fp32.",
        "- **Adapter**: `cassr train` (the real command, Real-ESRGAN second-order degradations, activation model",
        f"  `realesr-animevideov3.pth`) for {spec['adapter']['steps']} steps, batch {spec['adapter']['batch']} of "
        f"{spec['adapter']['crop']}² HR crops, lr {spec['adapter']['learning_rate']:g}, EMA {spec['adapter']['ema_decay']}.",
        "",
        "### Wall time",
        "",
        f"On a 2-core CPU ({env['machine']}, torch {env['torch']}, {env['threads']} threads), finished {env['finished']}.",
        "The machine was shared with other jobs while this ran; the load averages show how much (2.0 = both cores busy",
        "with this recipe alone), and the CPU time is what the recipe itself used.",
        "",
        "| part | wall time | CPU time | load average at start → end |",
        "|---|---|---|---|",
    ]
    for name, record in parts.items():
        load = f"{record.get('load_average_start', ['?'])[0]} → {record.get('load_average_end', ['?'])[0]}"
        cpu = record.get("cpu_seconds")
        lines.append(
            f"| {PART_TITLES.get(name, name)} | {record['seconds'] / 60:.1f} min | {'' if cpu is None else f'{cpu / 60:.1f} min'} | {load} |"
        )
    cpu_total = sum(record.get("cpu_seconds") or 0.0 for record in parts.values())
    cores = max((record.get("cpu_seconds") or 0.0) / record["seconds"] for record in parts.values() if record["seconds"] > 60)
    lines += [
        f"| **total** | **{report['total_minutes']} min** | **{cpu_total / 60:.1f} min** | |",
        "",
        f"The part that had the machine most to itself used {cores:.2f} cores on average; at that rate the recipe's",
        f"{cpu_total / 60:.0f} CPU-minutes take **≈ {cpu_total / cores / 60:.0f} min** of wall time on an idle 2-core CPU.",
        "",
        "## Measurements (on the shipped fp16 files)",
        "",
        f"- **VAE reconstruction PSNR** (whole images, posterior mean, 8-bit output): validation "
        f"**{_fmt(vae_val['psnr_rgb'])} dB** RGB / {_fmt(vae_val['psnr_y'])} dB Y over {vae_val['images']} images; training "
        f"(first {vae_train['images']}) {_fmt(vae_train['psnr_rgb'])} dB RGB / {_fmt(vae_train['psnr_y'])} dB Y.",
        "  The aim was ≥ 30 dB; this VAE falls short, and every stage-2 output inherits its losses. During",
        "  training (RGB PSNR on central 128² crops of the validation images, by step): "
        + ", ".join(f"{step}: {value:.1f}" for step, value in parts["vae"].get("validation_centre_crop_psnr_curve", []))
        + ". It was still gaining slowly when the learning rate reached zero: more steps or width are the levers.",
        "- **UNet ε-MSE** of the EMA weights at fixed timesteps on fixed latent windows (predicting zeros scores 1.0):",
        "",
        "| t | " + " | ".join(ev["unet_eps_mse_validation"]) + " |",
        "|---|" + "---|" * len(ev["unet_eps_mse_validation"]),
        "| validation | " + " | ".join(_fmt(v, 4) for v in ev["unet_eps_mse_validation"].values()) + " |",
        "| training | " + " | ".join(_fmt(v, 4) for v in ev["unet_eps_mse_train"].values()) + " |",
        "",
        f"- **Adapter**, `cassr train`'s own loss on {held['samples']} held-out crops of the validation images (fixed crops,",
        f"  degradations, timesteps and noise): zero-shot {_fmt(held['zero_shot_loss'], 4)}, trained {_fmt(held['trained_loss'], 4)};",
        f"  paired difference {held['paired_difference']:+.4f} ± {held['paired_difference_stderr']:.4f} (standard error),",
        f"  lower for {held['samples_better']} of {held['samples']} samples. Its training loss (mean of each 10 steps) went from"
        f" {parts['adapter']['log'].get('loss_first', float('nan')):.4f} to {parts['adapter']['log'].get('loss_last', float('nan')):.4f}.",
        "",
        "Image-quality tables (Y-PSNR, SSIM, NIQE … of stage 2 with and without the adapter) are made with",
        "`cassr eval` in docs/quality.md.",
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | {size:,} | `{digest}` |" for name, size, digest in files]
    lines += [
        "",
        "Regenerating gives the same architecture and procedure; bit-identical weights need the same torch",
        "version and thread count (float reductions on the CPU depend on them). After regenerating, re-record the",
        "CI gate's values (`tests/quality/README.md`).",
        "",
    ]
    return "\n".join(lines)


def _size(files: list[tuple[str, int, str]], prefix: str) -> int:
    return sum(size for name, size, _ in files if name.startswith(prefix))
