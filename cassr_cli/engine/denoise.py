"""The tiled latent denoising loop with multiple-attention guidance (DESIGN §2 stage 2, §3).

Per timestep: every tile's noise prediction (tiles batched through the UNet, guidance rows alongside in
``per-step`` mode) is blended into one full-latent prediction with the stage's single :class:`TilePlan`
and window, then ONE ``scheduler.step`` runs on the full latent. Noise is drawn once at full latent size
from the image's generator and sliced per tile, so results do not depend on the tile layout, the tile
batch or the batch order. Nothing in the step loop waits for the host.

Latents are ``[1, 4, h, w]`` float32 on the compute device (scaled by the VAE factor); the UNet runs in
the compute dtype; predictions are blended in float32.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cassr_cli.engine.attention import GuidanceCache, GuidanceContext
from cassr_cli.engine.schedulers import plan_schedule
from cassr_cli.tiling.blend import TileBlender
from cassr_cli.tiling.plan import Tile, plan_tiles

ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DenoiseSettings:
    """How to run the loop.

    Attributes:
        steps: denoising steps actually run (UNet evaluations per tile).
        strength: where the reference is noised to (``t0 ≈ strength·T``).
        guidance_mode: ``per-step`` or ``cached``.
        guidance_timestep: ``t_g`` of the cached guidance pass.
        streams: active guidance streams (``lr``, ``ref``), in row order.
        log_weights: logit bias ``log(weight)`` per active stream.
        guidance_scale: classifier-free guidance scale (1 = off).
        tile: latent tile edge (multiple of ``latent_multiple``); overlap: minimum latent overlap (the
            blend ramp).
        tile_batch: tiles per UNet call.
        latent_multiple: latent tiles and the (padded) latent are multiples of this (``2 ** down-samplings``
            of the UNet: 8 for SD 1.x/2.x); tile starts may sit at any latent pixel.
    """

    steps: int
    strength: float
    guidance_mode: str = "per-step"
    guidance_timestep: int = 200
    streams: tuple[str, ...] = ("lr", "ref")
    log_weights: tuple[float, ...] = (0.0, 0.0)
    guidance_scale: float = 1.0
    tile: int = 64
    overlap: int = 16
    tile_batch: int = 4
    latent_multiple: int = 8

    @property
    def cfg(self) -> int:
        return 2 if self.guidance_scale > 1.0 else 1


@dataclass(frozen=True)
class TextConditioning:
    """Prompt embeddings ``[1, 77, D]`` (compute dtype, device): ``cond`` for the main rows, ``uncond``
    for CFG's unconditional rows (None without CFG) and ``guide`` (the empty prompt) for guidance rows."""

    cond: torch.Tensor
    guide: torch.Tensor
    uncond: torch.Tensor | None = None


@dataclass(frozen=True)
class Noise:
    """All noise of one image's refinement, at full latent size (float32, device): ``start`` noises the
    reference to ``t0``; ``streams`` noise each guidance latent. Tiles slice it, so overlapping tiles see
    the same noise wherever they overlap."""

    start: torch.Tensor
    streams: Mapping[str, torch.Tensor]

    @classmethod
    def draw(cls, shape: tuple[int, ...], streams: tuple[str, ...], generator: torch.Generator, device: torch.device) -> Noise:
        """Draw on the CPU from ``generator`` (device-independent values), then move to ``device``."""
        start = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        per_stream = {s: torch.randn(shape, generator=generator, dtype=torch.float32).to(device) for s in streams}
        return cls(start, per_stream)

    def crop(self, y0: int, y1: int, x0: int, x1: int) -> Noise:
        """The same noise restricted to a window (for running a sub-region on its own)."""
        return Noise(self.start[..., y0:y1, x0:x1], {k: v[..., y0:y1, x0:x1] for k, v in self.streams.items()})


@dataclass
class DenoiseStats:
    """Counters and timings of one loop (``--json`` stats)."""

    seconds: float = 0.0
    guidance_seconds: float = 0.0
    steps: int = 0
    tiles: int = 0
    unet_calls: int = 0
    unet_rows: int = 0
    guidance_cache_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def noised(latent: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sqrt(ᾱ_t)·latent + sqrt(1-ᾱ_t)·noise`` — the UNet's input convention at ``timestep`` (float32).

    ``timestep`` is a 0-d tensor (or ``[B]``, one per row). ᾱ is gathered with ``index_select``: indexing
    with a 0-d device tensor would call ``.item()``, a host synchronisation in the step loop.
    """
    alphas = alphas_cumprod.to(latent.device, torch.float32)  # no copy when already there
    a = alphas.index_select(0, timestep.reshape(-1).long().to(alphas.device))
    a = a.reshape(()) if a.numel() == 1 else a.reshape(-1, *([1] * (latent.dim() - 1)))
    return a.sqrt() * latent + (1.0 - a).sqrt() * noise


def denoise(
    unet: torch.nn.Module,
    scheduler: Any,
    reference_latent: torch.Tensor,
    guide_latents: Mapping[str, torch.Tensor],
    text: TextConditioning,
    settings: DenoiseSettings,
    noise: Noise,
    generator: torch.Generator,
    *,
    dtype: torch.dtype,
    cache_offload: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, DenoiseStats]:
    """Refine ``reference_latent`` ``[1, 4, h, w]`` (h, w multiples of ``settings.latent_multiple``) guided by
    ``guide_latents``.

    Args:
        unet: the base UNet with multi-attention processors installed.
        scheduler: a fresh diffusers scheduler (it is stateful).
        reference_latent: ``g_ref``, also the start point.
        guide_latents: ``{stream: latent}`` for every stream in ``settings.streams``.
        noise: this image's noise (:meth:`Noise.draw`).
        generator: CPU generator of this image, for stochastic samplers (e.g. ``euler-a``).
        dtype: UNet compute dtype.
        cache_offload: keep the cached guidance K/V in host memory (large images).
    """
    device = reference_latent.device
    stats = DenoiseStats()
    start = time.perf_counter()
    shape = tuple(reference_latent.shape)
    stream_noise = noise.streams
    schedule = plan_schedule(scheduler, settings.steps, settings.strength, device)
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)  # once, not per step
    latent = scheduler.add_noise(reference_latent, noise.start, schedule.timesteps[:1])
    multiple = settings.latent_multiple
    if shape[-2] % multiple or shape[-1] % multiple or settings.tile % multiple:
        raise ValueError(f"latent {shape[-2]}×{shape[-1]} and tile {settings.tile} must be multiples of {multiple}")
    plan = plan_tiles(shape[-2], shape[-1], settings.tile, settings.overlap, align=1, multiple=multiple)
    blender = TileBlender(plan, device=device, dtype=torch.float32)
    batches = list(plan.batches(settings.tile_batch))
    index_of = {tile: i for i, tile in enumerate(plan)}
    stats.tiles, stats.steps = len(plan), len(schedule.timesteps)

    cache: GuidanceCache | None = None
    if settings.guidance_mode == "cached" and settings.streams:
        g_start = time.perf_counter()
        cache = GuidanceCache(offload=cache_offload)
        t_g = torch.tensor(settings.guidance_timestep, device=device)
        guides_t = {s: noised(guide_latents[s], stream_noise[s], t_g, alphas) for s in settings.streams}
        for b, batch in enumerate(batches):
            rows = torch.cat([_crop(guides_t[s], batch) for s in settings.streams], 0)
            ctx = GuidanceContext("record", tuple(index_of[t] for t in batch), batch=b, streams=settings.streams, cache=cache)
            emb = text.guide.expand(rows.shape[0], -1, -1)
            unet(rows.to(dtype), t_g, encoder_hidden_states=emb, cross_attention_kwargs={"guidance": ctx})
            stats.unet_calls += 1
            stats.unet_rows += rows.shape[0]
        stats.guidance_seconds = time.perf_counter() - g_start
        stats.guidance_cache_bytes = cache.nbytes()

    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    total_work = len(schedule.timesteps) * len(batches)
    for step, t in enumerate(schedule.timesteps):
        model_in = scheduler.scale_model_input(latent, t)
        guides_t = {}
        if settings.guidance_mode == "per-step":
            guides_t = {s: noised(guide_latents[s], stream_noise[s], t, alphas) for s in settings.streams}
        prediction = blender.zeros((1, shape[1]))
        for b, batch in enumerate(batches):
            out = _predict_batch(unet, model_in, guides_t, text, settings, batch, b, index_of, t, cache, dtype, stats)
            for j, tile in enumerate(batch):
                blender.add(prediction, tile, out[j])
            if progress is not None:
                progress("denoise", step * len(batches) + b + 1, total_work)
        latent = scheduler.step(prediction, t, latent, **step_kwargs).prev_sample
    if cache is not None:
        cache.release()
    stats.seconds = time.perf_counter() - start
    return latent, stats


def _crop(latent: torch.Tensor, batch: tuple[Tile, ...]) -> torch.Tensor:
    """``[len(batch), C, th, tw]``: the batch's tiles cut from a ``[1, C, h, w]`` latent."""
    return torch.cat([latent[..., t.y0 : t.y1, t.x0 : t.x1] for t in batch], 0)


def _predict_batch(
    unet: torch.nn.Module,
    model_in: torch.Tensor,
    guides_t: Mapping[str, torch.Tensor],
    text: TextConditioning,
    settings: DenoiseSettings,
    batch: tuple[Tile, ...],
    batch_index: int,
    index_of: Mapping[Tile, int],
    t: torch.Tensor,
    cache: GuidanceCache | None,
    dtype: torch.dtype,
    stats: DenoiseStats,
) -> torch.Tensor:
    """One UNet call for a tile batch; returns the (CFG-combined) predictions ``[T, C, th, tw]`` (fp32)."""
    n = len(batch)
    main = _crop(model_in, batch)
    rows = [main] * settings.cfg
    emb = [text.cond.expand(n, -1, -1)]
    if settings.cfg == 2:
        assert text.uncond is not None
        emb.insert(0, text.uncond.expand(n, -1, -1))  # row order (cfg, tile): uncond first, then cond
    mode = "off"
    if settings.streams:
        mode = "batched" if settings.guidance_mode == "per-step" else "cached"
    if mode == "batched":
        rows += [_crop(guides_t[s], batch) for s in settings.streams]
        emb += [text.guide.expand(n * len(settings.streams), -1, -1)]
    sample = torch.cat(rows, 0).to(dtype)
    ctx = GuidanceContext(
        mode,  # type: ignore[arg-type]
        tuple(index_of[tile] for tile in batch),
        batch=batch_index,
        cfg=settings.cfg,
        streams=settings.streams,
        log_weights=settings.log_weights,
        cache=cache,
    )
    out = unet(sample, t, encoder_hidden_states=torch.cat(emb, 0), cross_attention_kwargs={"guidance": ctx}).sample
    stats.unet_calls += 1
    stats.unet_rows += sample.shape[0]
    out = out[: n * settings.cfg].float()
    if settings.cfg == 2:
        uncond, cond = out[:n], out[n:]
        return uncond + settings.guidance_scale * (cond - uncond)
    return out
