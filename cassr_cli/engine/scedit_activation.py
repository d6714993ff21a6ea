"""Stage 1 as a diffusion sample: the frozen base model with a trained SCEdit tuner, conditioned on the
up-sampled LR image (CasSR's own activation; DESIGN §2).

For an LR image ``y`` and a target size ``H × W``:

1. the condition is ``up(y)``, ``y`` resized (bicubic) to ``H × W`` and padded (reflect) to the base
   model's pixel alignment; it stays on the device in the compute dtype;
2. a latent is sampled from pure noise (drawn at full latent size from this stage's own generator) with
   ``activation_steps`` steps of the chosen sampler, on the same tiled latent loop as stage 2
   (:func:`~cassr_cli.engine.denoise.sample_tiled`: one plan, predictions blended at every step). Each
   tile's prediction is the UNet with tuned skips, the tuner seeing that tile's crop of the condition;
3. the latent is decoded with the tiled VAE and cropped to ``H × W``: ``x_ref``.

Out of device memory halves the tile batch, then the tile, like stage 2 (:mod:`cassr_cli.engine.backoff`).
The UNet is the one stage 2 uses; the tuner's hooks act only inside this stage's calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.activation import pad_to_multiple, resize_image
from cassr_cli.engine.backoff import run_with_backoff
from cassr_cli.engine.base_model import BaseModel, encode_prompt
from cassr_cli.engine.denoise import crop_tiles, latent_tile_plan, sample_tiled
from cassr_cli.engine.schedulers import make_scheduler, plan_schedule
from cassr_cli.engine.vae_tiling import decode_tiled, latent_plan
from cassr_cli.errors import NumericalError
from cassr_cli.runtime.device import Runtime, peak_memory_bytes, reset_peak_memory, synchronize
from cassr_cli.tiling.plan import Tile

MIN_TILE_PX = 128
"""Smallest tile (output pixels) tried after out-of-memory errors."""

ProgressFn = Any  # ``progress(stage, done, total)``


@dataclass(frozen=True)
class SCEditSettings:
    """How the activation samples (sizes in output pixels; the diffusion tile options of the run)."""

    steps: int
    scheduler: str
    tile_size: int
    tile_overlap: int
    tile_batch: int
    vae_tile_size: int

    @classmethod
    def from_config(cls, config: UpscaleConfig) -> SCEditSettings:
        return cls(
            steps=config.activation_steps,
            scheduler=config.scheduler,
            tile_size=config.tile_size,
            tile_overlap=config.tile_overlap,
            tile_batch=config.tile_batch,
            vae_tile_size=config.vae_tile_size,
        )


class SCEditActivation:
    """The SCEdit activation on a loaded base model.

    Args:
        base: the frozen base model (shared with stage 2).
        tuner: an :class:`~cassr_cli.models.scedit.SCEditTuner` for ``base`` (moved to the device and
            compute dtype here).
        runtime: device and compute dtype.
        settings: sampling and tiling settings.
        scale: the run's output scale (for the host-memory estimate: the condition canvas is as large as
            the output).
        name: for messages.
    """

    def __init__(
        self, base: BaseModel, tuner: Any, runtime: Runtime, settings: SCEditSettings, *, scale: float = 4.0, name: str = "SCEdit"
    ) -> None:
        from cassr_cli.models.scedit import TunedUNet

        tuner.check_matches(base.unet, base.vae_factor, source=name)
        tuner.to(runtime.device, runtime.dtype).requires_grad_(False).eval()
        self.base = base
        self.runtime = runtime
        self.settings = settings
        self.name = name
        self.scale = max(1, int(-(-scale // 1)))
        self.tuned = TunedUNet(base.unet, tuner)
        self.text = encode_prompt(base, "", runtime.device)  # CasSR is image-guided: the empty prompt

    @classmethod
    def load(cls, path: Path, base: BaseModel, runtime: Runtime, config: UpscaleConfig) -> SCEditActivation:
        """Load the tuner file ``path`` for ``base`` (refused with a clear message if made for another)."""
        from cassr_cli.models.scedit import SCEditTuner

        tuner, _ = SCEditTuner.load(path)
        return cls(base, tuner, runtime, SCEditSettings.from_config(config), scale=config.scale, name=f"SCEdit tuner {path.name}")

    def close(self) -> None:
        """Remove the tuner's hooks from the shared UNet."""
        self.tuned.close()

    @torch.inference_mode()
    def activate(
        self,
        image: torch.Tensor,
        *,
        out_size: tuple[int, int],
        generator: torch.Generator,
        progress: ProgressFn = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``x_ref`` ``[1, 3, out_h, out_w]`` float32 on the CPU in [0, 1] for ``image`` ``[1, 3, h, w]``
        (CPU, [0, 1]), and the stage's stats. All noise comes from ``generator`` (CPU)."""
        out_h, out_w = out_size
        start = time.perf_counter()
        condition = pad_to_multiple(resize_image(image, out_h, out_w), self.base.pixel_align)
        state = generator.get_state()
        (decoded, stats), tile, batch, retries = run_with_backoff(
            lambda tile, batch: self._run(condition, generator, tile, batch, progress),
            tile=self.settings.tile_size,
            batch=self.settings.tile_batch,
            min_tile=MIN_TILE_PX,
            align=self.base.pixel_align,
            device=self.runtime.device,
            what="stage 1 (SCEdit)",
            hint="free GPU memory, use a spandrel --activation, or --dtype fp16",
            before_retry=lambda: generator.set_state(state),  # the retry draws the same noise
        )
        stats.update(kind="scedit", tile_size=tile, tile_batch=batch, oom_retries=retries, seconds=time.perf_counter() - start)
        return decoded[..., :out_h, :out_w].contiguous(), stats

    def _run(
        self, condition: torch.Tensor, generator: torch.Generator, tile_px: int, tile_batch: int, progress: ProgressFn
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Sample and decode for the padded condition ``[1, 3, H, W]`` (CPU); returns the decoded image
        ``[1, 3, H, W]`` (CPU, float32) and stats."""
        device, dtype = self.runtime.device, self.runtime.dtype
        reset_peak_memory(device)
        f = self.base.vae_factor
        shape = (1, int(self.base.unet.config.in_channels), condition.shape[-2] // f, condition.shape[-1] // f)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        latent, stats = self.sample(condition.to(device, dtype), noise, tile_px, tile_batch, generator, progress=progress)
        decode_start = time.perf_counter()
        report = None if progress is None else (lambda done, total: progress("activation-decode", done, total))
        decoded, fp32_retries = decode_tiled(self.base.vae, latent, tile_px=self.settings.vae_tile_size, dtype=dtype, progress=report)
        synchronize(device)
        stats.update(
            decode_seconds=time.perf_counter() - decode_start,
            decode_tiles=len(latent_plan(shape[-2], shape[-1], self.settings.vae_tile_size, f)),
            fp32_retries=fp32_retries,
            peak_memory_bytes=peak_memory_bytes(device),
            dtype=str(dtype).removeprefix("torch."),
        )
        return decoded, stats

    def sample(
        self,
        condition: torch.Tensor,
        noise: torch.Tensor,
        tile_px: int,
        tile_batch: int,
        generator: torch.Generator,
        *,
        progress: ProgressFn = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The sampled latent ``[1, C, H/f, W/f]`` (float32, device) on the tiled latent loop.

        Args:
            condition: the padded up-sampled LR ``[1, 3, H, W]`` in [0, 1] on the device (compute dtype);
                ``H, W`` multiples of the base model's pixel alignment.
            noise: ``[1, C, H/f, W/f]`` float32 on the device, the start (scaled by the sampler's initial
                sigma); tiles slice it.
            tile_px: latent tile in output pixels; tile_batch: tiles per UNet call.
            generator: for stochastic samplers.
        """
        start = time.perf_counter()
        f, multiple = self.base.vae_factor, self.base.latent_multiple
        shape = tuple(noise.shape)
        tile = max(multiple, tile_px // f // multiple * multiple)
        plan = latent_tile_plan(shape, tile, min(self.settings.tile_overlap // f, tile // 2), multiple)
        scheduler = make_scheduler(self.settings.scheduler, self.base.scheduler_config)
        schedule = plan_schedule(scheduler, self.settings.steps, 1.0, noise.device)
        latent = noise * scheduler.init_noise_sigma
        counts = {"unet_calls": 0, "unet_rows": 0}

        def predict(model_in: torch.Tensor, t: torch.Tensor, batch: tuple[Tile, ...], b: int) -> torch.Tensor:
            rows = crop_tiles(model_in, batch)
            crops = torch.cat([condition[..., s.y0 * f : s.y1 * f, s.x0 * f : s.x1 * f] for s in batch], 0)
            counts["unet_calls"] += 1
            counts["unet_rows"] += rows.shape[0]
            return self.tuned(rows, t, self.text.expand(rows.shape[0], -1, -1), crops).float()

        latent = sample_tiled(
            scheduler, latent, schedule.timesteps, plan, tile_batch, predict, generator, progress=progress, stage="activation"
        )
        if not bool(torch.isfinite(latent).all()):  # one sync per image, after the step loop
            raise NumericalError("stage 1 (SCEdit) produced NaN/Inf values", hint="try --dtype fp32 (or bf16), or another --scheduler")
        synchronize(noise.device)
        stats = {
            "steps": len(schedule.timesteps),
            "tiles": len(plan),
            **counts,
            "scheduler": self.settings.scheduler,
            "sample_seconds": time.perf_counter() - start,
        }
        return latent, stats
