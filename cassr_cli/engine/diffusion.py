"""Stage 2: guided diffusion with multiple attention, on the tiled latent engine.

Given the LR input and the activated reference at the target size:

1. encode ``g_ref = E(x_ref)`` and ``g_lr = E(up(x_lr))`` (tiled VAE, bicubic up-sampling);
2. sample from the reference noised to ``t0 ≈ strength·T`` with diffusers' loop (``engine/sampling.py``)
   over a :class:`~cassr_cli.engine.tiled_denoiser.TiledDenoiser` whose tile model is the UNet with
   multiple attention over the guidance streams (``engine/guided_unet.py``);
3. decode (tiled VAE, fp32 retry on non-finite tiles) and colour-fix against the reference.

Sizes are padded (reflect) to multiples of the base model's pixel alignment (64 pixels, i.e. 8 latent
pixels, for SD 1.x/2.x; see :attr:`BaseModel.pixel_align`) and cropped back, never resized.
Out of device memory in a step (encode, denoise, decode) shrinks that step's tiles and runs it again
(:func:`~cassr_cli.engine.oom.retry_on_oom`); below the floor the image fails with
:class:`~cassr_cli.errors.TileOutOfMemoryError`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.activation import pad_to_multiple, resize_image
from cassr_cli.engine.attention import install_processors, restore_processors
from cassr_cli.engine.base_model import BaseModel, encode_prompt, load_base_model, load_unet
from cassr_cli.engine.batch_size import DIFFUSION_FALLBACK, resolve_tile_batch, unet_tile_bytes
from cassr_cli.engine.canvas import CanvasPlacement
from cassr_cli.engine.colorfix import color_fix
from cassr_cli.engine.guidance import CanvasBank, GuidanceBank, ScratchBank, TileBank, stream_log_weights
from cassr_cli.engine.guided_unet import GuidanceSettings, MultiAttentionModel, TextConditioning, noise_key
from cassr_cli.engine.latent_tiles import TileSize, diffusion_plan
from cassr_cli.engine.oom import retry_on_oom
from cassr_cli.engine.sampling import Noise, sample
from cassr_cli.engine.schedulers import make_scheduler, plan_schedule
from cassr_cli.engine.tiled_denoiser import DenoiseStats, TiledDenoiser, TileReplica
from cassr_cli.engine.vae_tiling import decode_tiled, encode_tiled, vae_tile_batch
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

logger = logging.getLogger(__name__)

MIN_TILE_PX = 256
"""Smallest diffusion tile (output pixels) tried after out-of-memory errors."""
CACHE_DEVICE_BUDGET = 3 * 2**30
"""Guidance K/V kept between steps beyond this many bytes live in pinned host memory instead of on the GPU.
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
    vae_tile_batch: int = 1
    guidance_refresh: int = 1
    tile_shift: bool = False
    adapter_streams: tuple[str, ...] | None = None
    """Streams a loaded adapter has parameters for (it was trained on those); None without an adapter."""

    @classmethod
    def from_config(cls, config: UpscaleConfig, *, adapter_meta: dict[str, str] | None = None) -> DiffusionSettings:
        mode, t_g = config.guidance_mode, config.guidance_timestep
        if mode == "auto":
            mode = adapter_meta.get("mode", "cached") if adapter_meta else "cached"
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
            vae_tile_batch=config.vae_tile_batch,
            guidance_refresh=config.guidance_refresh,
            tile_shift=config.tile_shift,
            adapter_streams=adapter_streams,
        )

    def guidance(self) -> GuidanceSettings:
        """Streams, weights and schedule of the guidance passes."""
        weights = {"lr": self.lr_weight, "ref": self.ref_weight}
        # An adapter defines the streams it attends to (it was trained on exactly those); weights pick
        # among them and 0 switches one off.
        allowed = self.adapter_streams if self.adapter_streams is not None else ("lr", "ref")
        streams = tuple(s for s in ("lr", "ref") if weights[s] > 0 and s in allowed)
        cached = self.guidance_mode == "cached"
        return GuidanceSettings(
            streams=streams,
            log_weights=stream_log_weights([weights[s] for s in streams]),
            timestep=self.guidance_timestep if cached else None,
            refresh=1 if cached else self.guidance_refresh,
        )

    def diffusion_plan(self, latent_h: int, latent_w: int, tile_px: int, *, vae_factor: int, latent_multiple: int) -> TilePlan:
        """The diffusion tile plan over a ``latent_h × latent_w`` latent for ``tile_px``-pixel tiles
        (:func:`~cassr_cli.engine.latent_tiles.diffusion_plan` with this stage's overlap and shifting)."""
        return diffusion_plan(
            latent_h, latent_w, tile_px, overlap_px=self.tile_overlap, shifted=self.tile_shift,
            vae_factor=vae_factor, latent_multiple=latent_multiple,
        )


@dataclass(frozen=True)
class UNetReplica:
    """A copy of the stage's UNet (multi-attention processors and adapter installed) on another device,
    with the prompt embeddings there; made once per pipeline (:meth:`DiffusionStage.add_replica`)."""

    device: torch.device
    unet: Any
    text: TextConditioning
    previous_processors: dict[str, object]


class DiffusionStage:
    """Stage 2 on a loaded base model (multi-attention processors installed on its UNet).

    Args:
        base: the frozen base model on ``runtime``.
        runtime: device and compute dtype.
        settings: stage settings.
        adapter: a trained (or untrained) multi-attention adapter, already on the device, or None.

    With replicas (:meth:`add_replica`) each denoising step spreads its tile batches over the stage's
    device and the replicas' (``engine/tiled_denoiser.py``); encoding, decoding and the canvases stay on
    the stage's device.
    """

    def __init__(
        self, base: BaseModel, runtime: Runtime, settings: DiffusionSettings, adapter: Any = None, *, backend: str = "sdpa"
    ) -> None:
        self.base = base
        self.runtime = runtime
        self.settings = settings
        self.adapter = adapter
        self.backend = backend
        self._previous_processors = install_processors(base.unet, adapter, backend=backend)  # type: ignore[arg-type]
        self._text: TextConditioning | None = None
        self._kv_layers = kv_layer_widths(base.unet)
        self.replicas: list[UNetReplica] = []

    @classmethod
    def load(
        cls,
        config: UpscaleConfig,
        runtime: Runtime,
        base_folder: Path,
        adapter_path: Path | None = None,
        *,
        base: BaseModel | None = None,
        replicas: Sequence[Runtime] = (),
    ) -> DiffusionStage:
        """Load the base model in ``base_folder`` (unless ``base``, already loaded from it, is given, e.g.
        shared with an SCEdit activation) and the adapter onto ``runtime``, and a UNet replica onto each of
        ``replicas`` (other devices to spread the tiles over)."""
        if base is None:
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
        for other in replicas:
            stage.add_replica(load_unet(base_folder, other), other.device)
        return stage

    def add_replica(self, unet: Any, device: torch.device) -> UNetReplica:
        """Take ``unet`` (a fresh copy of the base UNet, frozen, on ``device`` in the compute dtype) as a
        replica: the multi-attention processors go on it with a copy of the adapter, the prompt embeddings
        are copied to ``device``."""
        adapter = None
        if self.adapter is not None:
            adapter = copy.deepcopy(self.adapter).to(device)
        previous = install_processors(unet, adapter, backend=self.backend)  # type: ignore[arg-type]
        text = self.text_conditioning()
        moved = TextConditioning(
            cond=text.cond.to(device), guide=text.guide.to(device), uncond=None if text.uncond is None else text.uncond.to(device)
        )
        replica = UNetReplica(device, unet, moved, previous)
        self.replicas.append(replica)
        return replica

    def close(self) -> None:
        """Restore the UNets' original attention processors."""
        restore_processors(self.base.unet, self._previous_processors)
        for replica in self.replicas:
            restore_processors(replica.unet, replica.previous_processors)

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
        placement: CanvasPlacement | None = None,
        progress: Any = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Refine ``reference`` ``[1, 3, H, W]`` ([0, 1]) guided by ``lr`` ``[1, 3, h, w]`` ([0, 1]).

        Returns the result ``[1, 3, H, W]`` float32 in [0, 1] on the placement's canvas device (default:
        the device path) and per-stage stats.
        """
        device, dtype = self.runtime.device, self.runtime.dtype
        placement = placement or CanvasPlacement.device_path(device)
        lr, reference = placement.to_canvas(lr), placement.to_canvas(reference)
        s = self.settings
        height, width = reference.shape[-2:]
        stats: dict[str, Any] = {}
        align = self.base.pixel_align
        guidance = s.guidance()

        def timed(name: str) -> _StageTimer:
            return _StageTimer(name, stats, device)

        def report(name: str) -> Any:
            return None if progress is None else (lambda done, total: progress(name, done, total))

        with timed("encode") as st:
            ref_padded = pad_to_multiple(reference, align)
            vae_kwargs = dict(
                tile_px=s.vae_tile_size, tile_batch=self._vae_batch(*ref_padded.shape[-2:]), device=device, dtype=dtype,
                placement=placement, progress=report("encode"),
            )
            g_ref, encode_info = encode_tiled(self.base.vae, ref_padded, **vae_kwargs)
            guides = {"ref": g_ref}
            if "lr" in guidance.streams:
                up = pad_to_multiple(resize_image(lr, height, width), align)
                guides["lr"], lr_info = encode_tiled(self.base.vae, up, **vae_kwargs)
                encode_info = encode_info.merge(lr_info)
            st.values["images"] = len(guides)
            st.values.update(encode_info.stats())
        with timed("denoise") as st:
            if self.replicas and not self._spreads(guidance):
                logger.warning(
                    "--tile-shift with cached or refreshed guidance runs its tiles on the first device only "
                    "(the guidance canvas is shared by all tiles)"
                )
            generator_state = generator.get_state()
            (latent, dstats, plan), size, retries = retry_on_oom(
                lambda size: self._denoise(g_ref, guides, guidance, size, generator, progress),
                TileSize(s.tile_size, self._diffusion_batch(g_ref, guidance)),
                self._smaller,
                device=device,
                stage="stage 2",
                hint="free GPU memory, use --steps 0, or --dtype fp16",
                before_retry=lambda: generator.set_state(generator_state),  # the retry draws the same noise
            )
            guides.clear()  # the guidance latents are done with
            if not latent.is_meta and not bool(torch.isfinite(latent).all()):  # one sync per image, after the loop
                raise NumericalError(
                    "stage 2 produced NaN/Inf values",
                    hint="try --dtype fp32 (or bf16), another --scheduler, or --steps 0",
                )
            st.values.update({k: v for k, v in asdict(dstats).items() if k != "extra"})
            st.values.update(dstats.extra)
            st.values["guidance_mode"] = s.guidance_mode
            st.values["streams"] = list(guidance.streams)
            st.values.update(oom_retries=retries, tile_size=size.tile_px, tile_batch=size.batch)
            st.values["latent_tile"] = [plan.tile_height, plan.tile_width]
        stats["guidance"] = {"seconds": dstats.guidance_seconds, "mode": s.guidance_mode}
        with timed("decode") as st:
            factor = self.base.vae_factor
            batch = self._vae_batch(latent.shape[-2] * factor, latent.shape[-1] * factor)
            decoded, decode_info = decode_tiled(
                self.base.vae, latent, tile_px=s.vae_tile_size, tile_batch=batch, dtype=dtype, placement=placement,
                progress=report("decode"),
            )
            st.values.update(decode_info.stats())
        with timed("colorfix"):
            image = color_fix(decoded[..., :height, :width], reference, s.color_fix)
        return image, stats

    def _vae_batch(self, height: int, width: int) -> int:
        """VAE tiles per call for a ``height × width``-pixel image (the setting, or auto from free memory)."""
        s = self.settings
        return vae_tile_batch(
            s.vae_tile_batch, height, width, tile_px=s.vae_tile_size, factor=self.base.vae_factor, dtype=self.runtime.dtype,
            free_bytes=free_memory_bytes(self.runtime),
        )

    def _diffusion_batch(self, g_ref: torch.Tensor, guidance: GuidanceSettings) -> int:
        """Diffusion tiles per UNet call for the latent ``g_ref`` ``[1, C, h, w]``: the setting, or auto: as many
        as fit the free device memory left after kept guidance K/V, by the rows a tile takes (CFG, guidance
        rows), spread over the devices the tiles go to."""
        s, runtime = self.settings, self.runtime
        plan = s.diffusion_plan(*g_ref.shape[-2:], s.tile_size, vae_factor=self.base.vae_factor, latent_multiple=self.base.latent_multiple)
        free = free_memory_bytes(runtime)
        if free is not None and guidance.keeps_bank:
            kept = estimate_bank_bytes(self._kv_layers, plan, len(guidance.streams), runtime.dtype, canvas=s.tile_shift)
            free -= kept if kept <= CACHE_DEVICE_BUDGET else 0
        cfg = 2 if s.guidance_scale > 1.0 else 1
        tile_bytes = unet_tile_bytes(plan.tile_height * plan.tile_width, guidance.rows_per_tile(cfg), runtime.dtype)
        workers = 1 + (len(self.replicas) if self._spreads(guidance) else 0)
        return resolve_tile_batch(
            s.tile_batch, tiles=len(plan), tile_bytes=tile_bytes, free_bytes=free, fallback=DIFFUSION_FALLBACK, workers=workers
        )

    def _smaller(self, size: TileSize) -> TileSize | None:
        """Halve the tile batch, then the tile (down to :data:`MIN_TILE_PX`, on the pixel alignment)."""
        return size.smaller(MIN_TILE_PX, self.base.pixel_align)

    def _denoise(
        self,
        g_ref: torch.Tensor,
        guides: dict[str, torch.Tensor],
        guidance: GuidanceSettings,
        size: TileSize,
        generator: torch.Generator,
        progress: Any,
    ) -> tuple[torch.Tensor, DenoiseStats, TilePlan]:
        """One sampling run at one tile size: noise, schedule, the tiled denoiser, the loop."""
        device, dtype, s = self.runtime.device, self.runtime.dtype, self.settings
        h, w = g_ref.shape[-2:]
        plan = s.diffusion_plan(h, w, size.tile_px, vae_factor=self.base.vae_factor, latent_multiple=self.base.latent_multiple)
        noise = Noise.draw(tuple(g_ref.shape), guidance.streams, generator, device)
        scheduler = make_scheduler(s.scheduler, self.base.scheduler_config)
        schedule = plan_schedule(scheduler, s.steps, s.strength, device)
        alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)  # once, not per step
        latent = scheduler.add_noise(g_ref, noise.start, schedule.timesteps[:1])
        stats = DenoiseStats()
        workers = [(device, self.base.unet, self.text_conditioning())]
        workers += [(r.device, r.unet, r.text) for r in self.replicas if self._spreads(guidance)]
        banks = [self._bank(plan, guidance) for _ in workers]  # per device: they hold per-tile-batch state
        worker_stats = [DenoiseStats() for _ in workers]
        models = [
            MultiAttentionModel(
                unet,
                text,
                guidance,
                alphas_cumprod=alphas.to(where),
                dtype=dtype,
                guidance_scale=s.guidance_scale,
                bank=bank,
                stats=counts,
            )
            for (where, unet, text), bank, counts in zip(workers, banks, worker_stats, strict=True)
        ]
        conditions: dict[str, torch.Tensor] = {}
        for stream in guidance.streams:
            conditions[stream] = guides[stream]
            conditions[noise_key(stream)] = noise.streams[stream]
        shifts = GridShifts(plan.tile_height, plan.tile_width, self.base.latent_multiple) if s.tile_shift else None
        denoiser = TiledDenoiser(
            models[0],
            plan,
            tile_batch=size.batch,
            conditions=conditions,
            shifts=shifts,
            steps=len(schedule.timesteps),
            progress=None if progress is None else (lambda done, total: progress("denoise", done, total)),
            stats=stats,
            device=device,
            replicas=[TileReplica(model, where) for model, (where, _, _) in zip(models[1:], workers[1:], strict=True)],
        )
        try:
            latent = sample(denoiser, scheduler, latent, schedule.timesteps, generator=generator)
        finally:
            denoiser.close()
        for counts in worker_stats:
            stats.unet_calls += counts.unet_calls
            stats.unet_rows += counts.unet_rows
            stats.guidance_seconds += counts.guidance_seconds
        stats.guidance_cache_bytes = sum(bank.nbytes() for bank in banks)
        stats.extra.update(guidance_refresh=guidance.refresh, tile_shift=s.tile_shift)
        if len(workers) > 1:
            stats.extra["devices"] = [
                {"device": str(where), "tile_batches": batches, "unet_calls": counts.unet_calls}
                for (where, _, _), batches, counts in zip(workers, denoiser.worker_batches, worker_stats, strict=True)
            ]
        for bank in banks:
            bank.release()
        return latent, stats, plan

    def _spreads(self, guidance: GuidanceSettings) -> bool:
        """Whether the tiles go to the replicas too. Not with shifted tiles whose guidance K/V outlive a call:
        their one canvas bank is written by every tile batch, and overlapping writes from several devices at
        once would make the result depend on timing."""
        return bool(self.replicas) and not (self.settings.tile_shift and guidance.keeps_bank)

    def _bank(self, plan: TilePlan, guidance: GuidanceSettings) -> GuidanceBank:
        """Where guidance K/V live between steps: nowhere (per-step), per tile batch, or on a canvas
        (shifted tiles); in pinned host memory when they would exceed :data:`CACHE_DEVICE_BUDGET`."""
        if not guidance.keeps_bank:
            return ScratchBank()
        canvas = self.settings.tile_shift
        offload = self.runtime.device.type == "cuda" and (
            estimate_bank_bytes(self._kv_layers, plan, len(guidance.streams), self.runtime.dtype, canvas=canvas) > CACHE_DEVICE_BUDGET
        )
        if canvas:
            return CanvasBank(plan.height, plan.width, multiple=self.base.latent_multiple, offload=offload)
        return TileBank(offload=offload)


def kv_layer_widths(unet: Any) -> tuple[tuple[int, int], ...]:
    """``(level, width)`` of every attn1 layer of ``unet``: its resolution level (0 = the latent's, each
    level halves it) and its K/V width; what :func:`estimate_bank_bytes` needs (walking the UNet's modules
    takes milliseconds, so stages do it once)."""
    from cassr_cli.models.adapter import self_attention_layers

    levels = len(unet.config.block_out_channels)
    return tuple((_level_of(key, levels), module.to_k.out_features) for key, module in self_attention_layers(unet).items())


def estimate_bank_bytes(
    layers: Sequence[tuple[int, int]], plan: TilePlan, streams: int, dtype: torch.dtype, *, canvas: bool = False
) -> int:
    """Bytes of guidance K/V kept for a whole image: every attn1 layer (``layers``, from
    :func:`kv_layer_widths`) stores K and V of every stream, for every tile (:class:`TileBank`) or once over
    the latent (:class:`CanvasBank`), at that layer's token count and width."""
    total = 0
    for level, width in layers:
        if canvas:
            tokens = (plan.height >> level) * (plan.width >> level)
        else:
            tokens = (plan.tile_height >> level) * (plan.tile_width >> level) * len(plan)
        total += 2 * tokens * width
    element = torch.finfo(dtype).bits // 8
    return total * streams * element


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
