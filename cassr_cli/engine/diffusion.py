"""Stage 2: guided diffusion with multiple attention, on the tiled latent engine.

Given the LR input and the activated reference at the target size:

1. encode ``g_ref = E(x_ref)`` and ``g_lr = E(up(x_lr))`` (tiled VAE, bicubic up-sampling);
2. denoise from the reference noised to ``t0 ≈ strength·T`` with multiple attention over the guidance
   streams (``engine/denoise.py``);
3. decode (tiled VAE, fp32 retry on non-finite tiles) and colour-fix against the reference.

Sizes are padded (reflect) to multiples of the base model's pixel alignment (64 pixels, i.e. 8 latent
pixels, for SD 1.x/2.x; see :attr:`BaseModel.pixel_align`) and cropped back, never resized.
Out of device memory anywhere in the stage halves the tile batch, then the tile, and restarts the
stage, down to a floor; then the image fails with :class:`~cassr_cli.errors.TileOutOfMemoryError`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.activation import pad_to_multiple, resize_image
from cassr_cli.engine.attention import install_processors, restore_processors, stream_log_weights
from cassr_cli.engine.base_model import BaseModel, encode_prompt, load_base_model
from cassr_cli.engine.colorfix import color_fix
from cassr_cli.engine.denoise import DenoiseSettings, Noise, TextConditioning, denoise
from cassr_cli.engine.schedulers import make_scheduler
from cassr_cli.engine.vae_tiling import decode_tiled, encode_tiled, latent_plan
from cassr_cli.errors import NumericalError, TileOutOfMemoryError
from cassr_cli.runtime.device import (
    Runtime,
    free_device_memory,
    is_out_of_memory,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
)

logger = logging.getLogger(__name__)

MIN_TILE_PX = 256
"""Smallest diffusion tile (output pixels) tried after out-of-memory errors."""
CACHE_DEVICE_BUDGET = 3 * 2**30
"""Cached guidance K/V beyond this many bytes are kept in pinned host memory instead of on the GPU.
3 GiB keeps a 512² → 2048² image's cache (2.15 GiB at default tiles) on the device, next to ~2.6 GB of fp16
weights and one tile batch, inside an 8 GB budget; larger images offload (the cache grows with tiles)."""


@dataclass(frozen=True)
class DiffusionSettings:
    """Stage-2 settings derived from :class:`UpscaleConfig` (sizes in pixels)."""

    steps: int
    strength: float
    scheduler: str
    guidance_mode: str
    guidance_timestep: int
    lr_weight: float
    ref_weight: float
    prompt: str
    negative_prompt: str
    guidance_scale: float
    color_fix: str
    tile_size: int
    tile_overlap: int
    tile_batch: int
    vae_tile_size: int
    adapter_streams: tuple[str, ...] | None = None
    """Streams a loaded adapter has parameters for (it was trained on those); None without an adapter."""

    @classmethod
    def from_config(cls, config: UpscaleConfig, *, adapter_meta: dict[str, str] | None = None) -> DiffusionSettings:
        mode, t_g = config.guidance_mode, config.guidance_timestep
        if mode == "auto":
            mode = adapter_meta.get("mode", "cached") if adapter_meta else "per-step"
            if adapter_meta and "guidance_timestep" in adapter_meta:
                t_g = int(adapter_meta["guidance_timestep"])
        adapter_streams = None
        if adapter_meta is not None:
            adapter_streams = tuple(s for s in adapter_meta.get("streams", "").split(",") if s)
        return cls(
            steps=config.steps,
            strength=config.strength,
            scheduler=config.scheduler,
            guidance_mode=mode,
            guidance_timestep=t_g,
            lr_weight=config.lr_weight,
            ref_weight=config.ref_weight,
            prompt=config.prompt,
            negative_prompt=config.negative_prompt,
            guidance_scale=config.guidance_scale,
            color_fix=config.color_fix,
            tile_size=config.tile_size,
            tile_overlap=config.tile_overlap,
            tile_batch=config.tile_batch,
            vae_tile_size=config.vae_tile_size,
            adapter_streams=adapter_streams,
        )

    def denoise_settings(
        self, tile_size: int, tile_batch: int, *, vae_factor: int = 8, latent_multiple: int = 8
    ) -> DenoiseSettings:
        """Loop settings for ``tile_size`` output pixels, on a base model whose VAE down-samples by
        ``vae_factor`` and whose UNet needs latent sizes that are multiples of ``latent_multiple``."""
        weights = {"lr": self.lr_weight, "ref": self.ref_weight}
        # An adapter defines the streams it attends to (it was trained on exactly those); weights pick
        # among them and 0 switches one off.
        allowed = self.adapter_streams if self.adapter_streams is not None else ("lr", "ref")
        streams = tuple(s for s in ("lr", "ref") if weights[s] > 0 and s in allowed)
        tile = max(latent_multiple, tile_size // vae_factor // latent_multiple * latent_multiple)
        overlap = min(self.tile_overlap // vae_factor, tile // 2)
        return DenoiseSettings(
            steps=self.steps,
            strength=self.strength,
            guidance_mode=self.guidance_mode,
            guidance_timestep=self.guidance_timestep,
            streams=streams,
            log_weights=stream_log_weights([weights[s] for s in streams]),
            guidance_scale=self.guidance_scale,
            tile=tile,
            overlap=overlap,
            tile_batch=tile_batch,
            latent_multiple=latent_multiple,
        )


class DiffusionStage:
    """Stage 2 on a loaded base model (multi-attention processors installed on its UNet).

    Args:
        base: the frozen base model on ``runtime``.
        runtime: device and compute dtype.
        settings: stage settings.
        adapter: a trained (or untrained) multi-attention adapter, already on the device, or None.
    """

    def __init__(
        self, base: BaseModel, runtime: Runtime, settings: DiffusionSettings, adapter: Any = None, *, backend: str = "sdpa"
    ) -> None:
        self.base = base
        self.runtime = runtime
        self.settings = settings
        self.adapter = adapter
        self._previous_processors = install_processors(base.unet, adapter, backend=backend)  # type: ignore[arg-type]
        self._text: TextConditioning | None = None

    @classmethod
    def load(
        cls, config: UpscaleConfig, runtime: Runtime, base_folder: Path, adapter_path: Path | None = None
    ) -> DiffusionStage:
        """Load the base model in ``base_folder`` (and the adapter) onto ``runtime``."""
        base = load_base_model(base_folder, runtime, name=config.base_model)
        adapter, meta = None, None
        if adapter_path is not None:
            adapter, meta = load_adapter(adapter_path, base, runtime)
        settings = DiffusionSettings.from_config(config, adapter_meta=meta)
        stage = cls(base, runtime, settings, adapter, backend=config.attention)
        # The prompts are fixed for the run: encode them now and give the text encoder's device memory
        # (0.7 GB for SD 2.x in fp16) back; the embeddings are cached on the stage.
        stage.text_conditioning()
        if runtime.device.type != "cpu":
            base.text_encoder.to("cpu")
        return stage

    def close(self) -> None:
        """Restore the UNet's original attention processors."""
        restore_processors(self.base.unet, self._previous_processors)

    def text_conditioning(self) -> TextConditioning:
        """Prompt embeddings, computed once per stage (i.e. once per run)."""
        if self._text is None:
            device = self.runtime.device
            guide = encode_prompt(self.base, "", device)
            cond = guide if self.settings.prompt == "" else encode_prompt(self.base, self.settings.prompt, device)
            uncond = None
            if self.settings.guidance_scale > 1.0:
                uncond = encode_prompt(self.base, self.settings.negative_prompt, device)
            self._text = TextConditioning(cond=cond, guide=guide, uncond=uncond)
        return self._text

    @torch.inference_mode()
    def __call__(
        self,
        lr: torch.Tensor,
        reference: torch.Tensor,
        *,
        generator: torch.Generator,
        progress: Any = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Refine ``reference`` ``[1, 3, H, W]`` (CPU, [0, 1]) guided by ``lr`` ``[1, 3, h, w]`` (CPU, [0, 1]).

        Returns the result ``[1, 3, H, W]`` float32 on the CPU in [0, 1] and per-stage stats.
        """
        tile, batch = self.settings.tile_size, self.settings.tile_batch
        generator_state = generator.get_state()
        retries = 0
        while True:
            try:
                image, stats = self._run(lr, reference, generator, tile, batch, progress)
                stats["denoise"]["oom_retries"] = retries
                stats["denoise"]["tile_size"] = tile
                stats["denoise"]["tile_batch"] = batch
                return image, stats
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                free_device_memory(self.runtime.device)
                retries += 1
                if batch > 1:
                    batch //= 2
                elif tile // 2 >= MIN_TILE_PX and (tile // 2) % self.base.pixel_align == 0:
                    tile //= 2
                else:
                    raise TileOutOfMemoryError(
                        f"out of device memory in stage 2 even with {tile}-pixel tiles, one at a time",
                        hint="free GPU memory, use --steps 0, or --dtype fp16",
                    ) from err
                logger.warning("out of device memory in stage 2; retrying with tile %d px, tile batch %d", tile, batch)
                generator.set_state(generator_state)  # the retry draws the same noise

    def _run(
        self, lr: torch.Tensor, reference: torch.Tensor, generator: torch.Generator, tile: int, batch: int, progress: Any
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        device, dtype = self.runtime.device, self.runtime.dtype
        s = self.settings
        height, width = reference.shape[-2:]
        stats: dict[str, Any] = {}
        align = self.base.pixel_align
        denoise_settings = s.denoise_settings(
            tile, batch, vae_factor=self.base.vae_factor, latent_multiple=self.base.latent_multiple
        )

        def timed(name: str) -> _StageTimer:
            return _StageTimer(name, stats, device)

        def report(name: str) -> Any:
            return None if progress is None else (lambda done, total: progress(name, done, total))

        with timed("encode") as st:
            ref_padded = pad_to_multiple(reference, align)
            g_ref = encode_tiled(self.base.vae, ref_padded, tile_px=s.vae_tile_size, device=device, dtype=dtype, progress=report("encode"))
            guides = {"ref": g_ref}
            if "lr" in denoise_settings.streams:
                up = pad_to_multiple(resize_image(lr, height, width), align)
                guides["lr"] = encode_tiled(self.base.vae, up, tile_px=s.vae_tile_size, device=device, dtype=dtype, progress=report("encode"))
            per_image = len(latent_plan(g_ref.shape[-2], g_ref.shape[-1], s.vae_tile_size, self.base.vae_factor))
            st.values["images"] = len(guides)
            st.values["tiles"] = per_image * len(guides)
        text = self.text_conditioning()
        with timed("denoise") as st:
            scheduler = make_scheduler(s.scheduler, self.base.scheduler_config)
            noise = Noise.draw(tuple(g_ref.shape), denoise_settings.streams, generator, device)
            latent, dstats = denoise(
                self.base.unet,
                scheduler,
                g_ref,
                {k: v for k, v in guides.items() if k in denoise_settings.streams},
                text,
                denoise_settings,
                noise,
                generator,
                dtype=dtype,
                cache_offload=self._cache_offload(g_ref.shape, denoise_settings),
                progress=progress,
            )
            del guides
            if not bool(torch.isfinite(latent).all()):  # one sync per image, after the step loop
                raise NumericalError(
                    "stage 2 produced NaN/Inf values",
                    hint="try --dtype fp32 (or bf16), another --scheduler, or --steps 0",
                )
            st.values.update({k: v for k, v in asdict(dstats).items() if k != "extra"})
            st.values["guidance_mode"] = denoise_settings.guidance_mode
            st.values["streams"] = list(denoise_settings.streams)
        stats["guidance"] = {"seconds": dstats.guidance_seconds, "mode": denoise_settings.guidance_mode}
        with timed("decode") as st:
            decoded, nan_retries = decode_tiled(self.base.vae, latent, tile_px=s.vae_tile_size, dtype=dtype, progress=report("decode"))
            st.values["fp32_retries"] = nan_retries
            st.values["tiles"] = len(latent_plan(latent.shape[-2], latent.shape[-1], s.vae_tile_size, self.base.vae_factor))
        with timed("colorfix"):
            image = color_fix(decoded[..., :height, :width], reference, s.color_fix)
        return image, stats

    def _cache_offload(self, latent_shape: tuple[int, ...], settings: DenoiseSettings) -> bool:
        """Whether the cached guidance K/V would exceed the device budget (then it lives on the host)."""
        if settings.guidance_mode != "cached" or self.runtime.device.type != "cuda":
            return False
        return estimate_cache_bytes(self.base.unet, latent_shape, settings, self.runtime.dtype) > CACHE_DEVICE_BUDGET


def estimate_cache_bytes(unet: Any, latent_shape: tuple[int, ...], settings: DenoiseSettings, dtype: torch.dtype) -> int:
    """Bytes of cached guidance K/V for a whole image: every attn1 layer stores K and V of every stream
    for every tile, at that layer's token count and width."""
    from cassr_cli.models.adapter import self_attention_layers
    from cassr_cli.tiling.plan import plan_tiles

    plan = plan_tiles(
        latent_shape[-2], latent_shape[-1], settings.tile, settings.overlap, align=1, multiple=settings.latent_multiple
    )
    per_tile = 0
    blocks = list(unet.config.block_out_channels)
    for key, module in self_attention_layers(unet).items():
        level = _level_of(key, len(blocks))
        tokens = (plan.tile_height >> level) * (plan.tile_width >> level)
        per_tile += 2 * tokens * module.to_k.out_features
    element = torch.finfo(dtype).bits // 8
    return per_tile * len(plan) * len(settings.streams) * element


def _level_of(key: str, levels: int) -> int:
    parts = key.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "up_blocks":
        return levels - 1 - int(parts[1])
    return levels - 1  # mid block


def load_adapter(path: Path, base: BaseModel, runtime: Runtime) -> tuple[Any, dict[str, str]]:
    """Load an adapter file, check it fits ``base``'s UNet, move it to the device (compute dtype)."""
    from cassr_cli.models.adapter import MultiAttentionAdapter

    adapter, meta = MultiAttentionAdapter.load(path)
    adapter.check_matches(base.unet, source=f"adapter {path}")
    adapter.to(runtime.device, runtime.dtype)
    adapter.requires_grad_(False)
    adapter.eval()
    return adapter, meta


class _StageTimer:
    """Context manager recording seconds and peak device memory of one stage into ``stats[name]``."""

    def __init__(self, name: str, stats: dict[str, Any], device: torch.device) -> None:
        self.name, self.stats, self.device = name, stats, device
        self.values: dict[str, Any] = {}

    def __enter__(self) -> _StageTimer:
        reset_peak_memory(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.values["seconds"] = time.perf_counter() - self.start
        self.values["peak_memory_bytes"] = peak_memory_bytes(self.device)
        self.stats[self.name] = self.values
