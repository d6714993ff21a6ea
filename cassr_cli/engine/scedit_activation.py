"""Stage 1 as a diffusion sample: the frozen base model with a trained SCEdit tuner, conditioned on the
up-sampled LR image (CasSR's own activation; DESIGN §2).

For an LR image ``y`` and a target size ``H × W``:

1. the condition is ``up(y)``, ``y`` resized (bicubic, antialiased) to ``H × W`` and padded (reflect) to
   the base model's pixel alignment, in the compute dtype, where the image's canvases live;
2. a latent is sampled from pure noise (drawn at full latent size from this stage's own generator) with
   ``activation_steps`` steps of the chosen sampler: diffusers' loop (:func:`~cassr_cli.engine.sampling.sample`)
   over a :class:`~cassr_cli.engine.tiled_denoiser.TiledDenoiser` whose tile model is the UNet with tuned
   skips (:class:`~cassr_cli.engine.scedit_model.SCEditModel`), each tile seeing its own crop of the
   condition; overlapping tiles are blended at every step, or with ``tile_shift`` the grid moves every step;
3. the latent is decoded with the tiled VAE (fp16 NaN guard, tile batches) and cropped to ``H × W``:
   ``x_ref``, on the canvas device.

It is the same engine as stage 2 — the same plan for the same tile options, the same device/host canvases
(``engine/canvas.py``) and the same out-of-memory back-off (:func:`~cassr_cli.engine.oom.retry_on_oom`: the
tile batch is halved, then the tile). The UNet is the one stage 2 uses; the tuner's hooks act only inside
this stage's calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.activation import pad_to_multiple, resize_image
from cassr_cli.engine.base_model import BaseModel, encode_prompt
from cassr_cli.engine.batch_size import DIFFUSION_FALLBACK, resolve_tile_batch, unet_tile_bytes
from cassr_cli.engine.canvas import CanvasPlacement
from cassr_cli.engine.latent_tiles import TileSize, diffusion_plan
from cassr_cli.engine.oom import retry_on_oom
from cassr_cli.engine.sampling import sample
from cassr_cli.engine.scedit_model import CONDITION, SCEditModel
from cassr_cli.engine.schedulers import make_scheduler, plan_schedule
from cassr_cli.engine.tiled_denoiser import DenoiseStats, TiledDenoiser
from cassr_cli.engine.vae_tiling import decode_tiled, vae_tile_batch
from cassr_cli.errors import NumericalError
from cassr_cli.runtime.device import (
    Runtime,
    free_memory_bytes,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
)
from cassr_cli.tiling.plan import TilePlan
from cassr_cli.tiling.shift import GridShifts

MIN_TILE_PX = 128
"""Smallest tile (output pixels) tried after out-of-memory errors."""

StageProgress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``."""


@dataclass(frozen=True)
class SCEditSettings:
    """How the activation samples (sizes in output pixels; the diffusion tile options of the run)."""

    steps: int
    scheduler: str
    tile_size: int
    tile_overlap: int
    tile_batch: int
    vae_tile_size: int
    vae_tile_batch: int = 1
    tile_shift: bool = False

    @classmethod
    def from_config(cls, config: UpscaleConfig) -> SCEditSettings:
        return cls(
            steps=config.activation_steps,
            scheduler=config.scheduler,
            tile_size=config.tile_size,
            tile_overlap=config.tile_overlap,
            tile_batch=config.tile_batch,
            vae_tile_size=config.vae_tile_size,
            vae_tile_batch=config.vae_tile_batch,
            tile_shift=config.tile_shift,
        )


class SCEditActivation:
    """The SCEdit activation on a loaded base model.

    Args:
        base: the frozen base model (shared with stage 2).
        tuner: an :class:`~cassr_cli.models.scedit.SCEditTuner` for ``base`` (moved to the device and
            compute dtype here).
        runtime: device and compute dtype.
        settings: sampling and tiling settings.
        scale: the run's output scale. ``x_ref`` is made at the output size, so this is the stage's
            "native" scale for the canvas and host-memory estimates (rounded up).
        name: for messages.
    """

    def __init__(
        self, base: BaseModel, tuner: Any, runtime: Runtime, settings: SCEditSettings, *, scale: float = 4.0, name: str = "SCEdit"
    ) -> None:
        from cassr_cli.models.scedit import TunedUNet

        tuner.check_matches(base.unet, base.vae_factor, source=name)
        tuner.to(runtime.device, runtime.dtype).requires_grad_(False).eval()
        self.base = base
        self.tuner = tuner
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
        placement: CanvasPlacement | None = None,
        progress: StageProgress | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``x_ref`` ``[1, 3, out_h, out_w]`` float32 in [0, 1] on the placement's canvas device (default: the
        device path) for ``image`` ``[1, 3, h, w]`` ([0, 1]), and the stage's stats. All noise comes from
        ``generator`` (CPU)."""
        device, dtype, s = self.runtime.device, self.runtime.dtype, self.settings
        placement = placement or CanvasPlacement.device_path(device)
        out_h, out_w = out_size
        reset_peak_memory(device)
        start = time.perf_counter()
        (latent, dstats, plan), size, retries = self._sample_with_backoff(placement.to_canvas(image), out_size, generator, placement, progress)
        if not latent.is_meta and not bool(torch.isfinite(latent).all()):  # one sync per image, after the loop
            raise NumericalError("stage 1 (SCEdit) produced NaN/Inf values", hint="try --dtype fp32 (or bf16), or another --scheduler")
        sample_seconds = time.perf_counter() - start
        decoded, decode_info = decode_tiled(
            self.base.vae, latent, tile_px=s.vae_tile_size, dtype=dtype, placement=placement,
            tile_batch=vae_tile_batch(
                s.vae_tile_batch, latent.shape[-2] * self.base.vae_factor, latent.shape[-1] * self.base.vae_factor,
                tile_px=s.vae_tile_size, factor=self.base.vae_factor, dtype=dtype, free_bytes=free_memory_bytes(self.runtime),
            ),
            progress=None if progress is None else (lambda done, total: progress("activation-decode", done, total)),
        )
        synchronize(device)
        seconds = time.perf_counter() - start
        stats: dict[str, Any] = {
            "kind": "scedit",
            "seconds": seconds,
            "sample_seconds": sample_seconds,
            "decode_seconds": seconds - sample_seconds,
            "steps": dstats.steps,
            "tiles": dstats.tiles,
            "unet_calls": dstats.unet_calls,
            "unet_rows": dstats.unet_rows,
            "scheduler": s.scheduler,
            "tile_size": size.tile_px,
            "tile_batch": size.batch,
            "latent_tile": [plan.tile_height, plan.tile_width],
            "tile_shift": s.tile_shift,
            "oom_retries": retries,
            "decode_tiles": decode_info.tiles,
            "fp32_retries": decode_info.fp32_retries,
            "decode_oom_retries": decode_info.oom_retries,
            "peak_memory_bytes": peak_memory_bytes(device),
            "dtype": str(dtype).removeprefix("torch."),
        }
        return decoded[..., :out_h, :out_w], stats

    def _sample_with_backoff(
        self,
        image: torch.Tensor,
        out_size: tuple[int, int],
        generator: torch.Generator,
        placement: CanvasPlacement,
        progress: StageProgress | None,
    ) -> tuple[tuple[torch.Tensor, DenoiseStats, TilePlan], TileSize, int]:
        """The condition ``up(image)`` and the sampling run, shrunk after out-of-memory errors
        (:func:`~cassr_cli.engine.oom.retry_on_oom`); the condition is freed on return."""
        s = self.settings
        condition = pad_to_multiple(resize_image(image, *out_size), self.base.pixel_align).to(self.runtime.dtype)
        state = generator.get_state()
        return retry_on_oom(
            lambda size: self._run(condition, size, generator, placement, progress),
            TileSize(s.tile_size, self._batch(condition)),
            lambda size: size.smaller(MIN_TILE_PX, self.base.pixel_align),
            device=self.runtime.device,
            stage="stage 1 (SCEdit)",
            hint="free GPU memory, use a spandrel --activation, or --dtype fp16",
            before_retry=lambda: generator.set_state(state),  # the retry draws the same noise
        )

    def _batch(self, condition: torch.Tensor) -> int:
        """Tiles per UNet call for the padded condition ``[1, 3, H, W]``: the setting, or auto from free device
        memory (one UNet row per tile, and as much again for the tuner's condition features)."""
        s, f = self.settings, self.base.vae_factor
        plan = diffusion_plan(
            condition.shape[-2] // f, condition.shape[-1] // f, s.tile_size, overlap_px=s.tile_overlap, shifted=s.tile_shift,
            vae_factor=f, latent_multiple=self.base.latent_multiple,
        )
        return resolve_tile_batch(
            s.tile_batch, tiles=len(plan), tile_bytes=unet_tile_bytes(plan.tile_height * plan.tile_width, 2, self.runtime.dtype),
            free_bytes=free_memory_bytes(self.runtime), fallback=DIFFUSION_FALLBACK,
        )

    def _run(
        self, condition: torch.Tensor, size: TileSize, generator: torch.Generator, placement: CanvasPlacement, progress: StageProgress | None
    ) -> tuple[torch.Tensor, DenoiseStats, TilePlan]:
        """One sampling run at one tile size: the start noise (drawn here, so a retry after rewinding the
        generator draws the same), then :meth:`sample`."""
        f = self.base.vae_factor
        shape = (1, int(self.base.unet.config.in_channels), condition.shape[-2] // f, condition.shape[-1] // f)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.runtime.device)
        return self.sample(condition, noise, size, generator, placement=placement, progress=progress)

    def sample(
        self,
        condition: torch.Tensor,
        noise: torch.Tensor,
        size: TileSize,
        generator: torch.Generator,
        *,
        placement: CanvasPlacement | None = None,
        progress: StageProgress | None = None,
    ) -> tuple[torch.Tensor, DenoiseStats, TilePlan]:
        """The sampled latent ``[1, C, H/f, W/f]`` (float32, compute device), the loop's stats and its plan.

        Args:
            condition: the padded up-sampled LR ``[1, 3, H, W]`` in [0, 1] on the placement's canvas device;
                ``H, W`` multiples of the base model's pixel alignment.
            noise: ``[1, C, H/f, W/f]`` float32 on the compute device, the start (scaled by the sampler's
                initial sigma); tiles slice it.
            size: the tile (output pixels) and tiles per UNet call.
            generator: for stochastic samplers.
        """
        device, s, f = self.runtime.device, self.settings, self.base.vae_factor
        placement = placement or CanvasPlacement.device_path(device)
        multiple = self.base.latent_multiple
        h, w = noise.shape[-2:]
        plan = diffusion_plan(
            h, w, size.tile_px, overlap_px=s.tile_overlap, shifted=s.tile_shift, vae_factor=f, latent_multiple=multiple
        )
        scheduler = make_scheduler(s.scheduler, self.base.scheduler_config)
        schedule = plan_schedule(scheduler, s.steps, 1.0, device)
        stats = DenoiseStats()
        denoiser = TiledDenoiser(
            SCEditModel(self.tuned, self.text, placement=placement, stats=stats),
            plan,
            tile_batch=size.batch,
            conditions={CONDITION: condition},
            shifts=GridShifts(plan.tile_height, plan.tile_width, multiple) if s.tile_shift else None,
            steps=len(schedule.timesteps),
            progress=None if progress is None else (lambda done, total: progress("activation", done, total)),
            stats=stats,
            device=device,
        )
        latent = sample(denoiser, scheduler, noise * scheduler.init_noise_sigma, schedule.timesteps, generator=generator)
        return latent, stats, plan
