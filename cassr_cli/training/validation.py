"""Validation during training: the validation images through the real inference pipeline.

The pipeline is :class:`cassr_cli.engine.pipeline.CassrPipeline`. For the adapter it has the trainer's
frozen activation stage and a :class:`cassr_cli.engine.diffusion.DiffusionStage` built on the trainer's
base model and a copy of the adapter being trained (EMA weights when EMA is on) — the same code ``cassr
upscale --adapter`` runs, in ``cached`` guidance mode at the trained ``t_g``. For an SCEdit tuner it is
the SCEdit activation alone (``cassr upscale --activation TUNER --steps 0``) with a copy of the tuner,
sampling ``validation.steps`` steps from noise. Results are written as 8-bit PNGs to
``output_dir/validation/step-<N>/``; each image's noise comes from ``(seed, relative path)``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cassr_cli.training.loop import Trainer

logger = logging.getLogger(__name__)


def run_validation(trainer: Trainer, step: int) -> list[Path]:
    """Upscale every validation image with the current adapter; returns the PNGs written."""
    from cassr_cli.config import UpscaleConfig
    from cassr_cli.engine.diffusion import DiffusionSettings, DiffusionStage
    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.io.discover import discover
    from cassr_cli.io.image import encode_image, read_image, write_atomic
    from cassr_cli.runtime.seeding import image_seed

    c = trainer.config
    v = c.validation
    t_g = c.adapter.guidance_timestep
    tiles = {"tile_size": v.tile_size, "tile_overlap": min(128, v.tile_size // 4), "vae_tile_size": v.tile_size}
    if trainer.kind == "scedit":
        from cassr_cli.engine.scedit_activation import SCEditActivation, SCEditSettings

        upscale = UpscaleConfig(scale=float(c.data.scale), steps=0, activation_steps=v.steps, scheduler=v.scheduler, seed=c.seed, **tiles)
        activation = SCEditActivation(
            trainer.frozen.base, trainer.inference_adapter(), trainer.runtime, SCEditSettings.from_config(upscale),
            scale=upscale.scale, name="SCEdit tuner being trained",
        )
        pipeline = CassrPipeline(activation)
    else:
        upscale = UpscaleConfig(
            scale=float(c.data.scale),
            steps=v.steps,
            strength=v.strength,
            scheduler=v.scheduler,
            guidance_mode="cached",
            guidance_timestep=t_g,
            lr_weight=1.0 if "lr" in trainer.streams else 0.0,
            ref_weight=1.0 if "ref" in trainer.streams else 0.0,
            prompt=c.train.prompt,
            seed=c.seed,
            **tiles,
        )
        settings = DiffusionSettings.from_config(upscale, adapter_meta={"mode": "cached", "guidance_timestep": str(t_g)})
        adapter = trainer.inference_adapter().to(trainer.runtime.device, trainer.runtime.dtype)
        pipeline = CassrPipeline(trainer.frozen.activation, DiffusionStage(trainer.frozen.base, trainer.runtime, settings, adapter))
    out_dir = Path(c.output_dir) / "validation" / f"step-{step}"
    written = []
    start = time.perf_counter()
    try:
        for item in discover(v.images, recursive=True).items:
            decoded = read_image(item.path, max_pixels=c.data.max_pixels)
            image = torch.from_numpy(decoded.rgb).permute(2, 0, 1)[None].contiguous()
            size = (decoded.height * c.data.scale, decoded.width * c.data.scale)
            generator = torch.Generator("cpu").manual_seed(image_seed(c.seed, item.relative.as_posix()))
            result = pipeline(image, out_size=size, generator=generator)
            rgb = result.image[0].permute(1, 2, 0).numpy()
            data = encode_image(rgb, None, fmt="png", bit_depth=8, is_gray=False, quality=95, icc_profile=None, exif=None)
            path = out_dir / item.relative.with_suffix(".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
            written.append(path)
    finally:
        pipeline.close()
    logger.info("validation at step %d: %d image(s) in %.1f s -> %s", step, len(written), time.perf_counter() - start, out_dir)
    return written
