"""Workloads (what to upscale, with which settings) and variants (what to compare on it).

DESIGN.md §8's standard workloads are ``512x4`` (512² → 2048²) and ``1024x4`` (1024² → 4096²) at default
settings, plus ``--steps 0``. They are GPU workloads: on this project's 2-core CPU machine one SD 2.1-base
UNet forward at a 64² latent takes seconds, so the ``cpu-*`` workloads shrink the image, the tiles and the
step count while keeping real-size models, and are read as ratios inside one run.

The ``cpu-strip-N`` series is built so that *every* tiled stage has exactly ``N`` tiles (one row): output
256 × (256 + 192·(N−1)) px; diffusion tiles 256 px (32 latent) overlapping 64 px, VAE tiles 256 px
overlapping 64 px, stage-1 tiles 64 input px overlapping 16. Work is then exactly proportional to ``N``
and affine in the pixel count, which is what "time is linear in pixels" can mean with overlapping tiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Workload:
    """An input size and the settings it runs at.

    Attributes:
        name: what ``--workload`` selects.
        height, width: input pixels.
        scale: the upscale factor.
        overrides: :class:`~cassr_cli.config.UpscaleConfig` fields changed from the defaults.
        description: one line for the report.
    """

    name: str
    height: int
    width: int
    scale: int = 4
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def out_size(self) -> tuple[int, int]:
        return self.height * self.scale, self.width * self.scale

    @property
    def out_pixels(self) -> int:
        return self.out_size[0] * self.out_size[1]


CPU_TILES: dict[str, Any] = {
    "tile_size": 256,
    "tile_overlap": 64,
    "vae_tile_size": 256,
    "activation_tile_size": 64,
    "activation_tile_overlap": 16,
}
"""Smaller tiles for CPU workloads (the defaults are 512/128/512/256/32)."""


def _strip(n: int, steps: int = 2) -> Workload:
    width = 64 + 48 * (n - 1)
    return Workload(
        f"cpu-strip-{n}",
        64,
        width,
        overrides={**CPU_TILES, "steps": steps},
        description=f"64×{width} → 256×{width * 4}: {n} tile(s) in every stage, {steps} steps",
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("256x4", 256, 256, description="256² → 1024², default settings (size series)"),
        Workload("512x4", 512, 512, description="DESIGN §8: 512² → 2048², default settings"),
        Workload("1024x4", 1024, 1024, description="DESIGN §8: 1024² → 4096², default settings"),
        Workload("2048x4", 2048, 2048, description="2048² → 8192², default settings (size series, dry run)"),
        Workload(
            "cpu-64x4", 64, 64, overrides={**CPU_TILES, "steps": 4}, description="CPU: 64² → 256², 4 steps, small tiles"
        ),
        Workload(
            "cpu-128x4",
            128,
            128,
            overrides={**CPU_TILES, "steps": 4},
            description="CPU: 128² → 512², 4 steps, small tiles (3×3 diffusion tiles)",
        ),
        *(_strip(n) for n in (1, 2, 3, 4)),
        Workload(
            "tiny-32x4",
            32,
            48,
            overrides={"steps": 2, "tile_size": 64, "tile_overlap": 16, "vae_tile_size": 64, "activation_tile_size": 32, "activation_tile_overlap": 8},
            description="smoke test: 32×48 → 128×192 on toy models",
        ),
    )
}


@dataclass(frozen=True)
class Variant:
    """One comparison on a workload.

    Attributes:
        name: what ``--compare`` selects.
        kind: ``cassr`` (the pipeline) or ``diffusers-x4`` (StableDiffusionUpscalePipeline).
        overrides: settings changed for this variant (``dtype`` included).
        steps: ``same`` (the workload's steps), ``default`` (the pipeline's own default) or a number.
        description: one line for the report.
        channels_last: run the UNet and VAE in channels-last memory format (an experiment the engine does not
            do yet; the benchmark converts the models for this variant and converts them back).
        cache_device_budget: bytes of cached guidance K/V kept on the GPU before the engine moves the cache
            to pinned host memory (``cassr_cli.engine.diffusion.CACHE_DEVICE_BUDGET``, 2 GiB), changed for
            this variant only: measures what the offload costs.
        scedit: stage 1 is the SCEdit activation (an SCEdit tuner of SD 2.1-base's size on the same UNet,
            sampled from noise for ``activation_steps``) instead of the spandrel network.
    """

    name: str
    kind: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    steps: str | int = "same"
    description: str = ""
    channels_last: bool = False
    cache_device_budget: int | None = None
    scedit: bool = False


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "a",
            "cassr",
            description="(a) cassr defaults (fp16 on CUDA, fp32 on CPU; cached guidance, 5 steps; auto tile batches: from free "
            "GPU memory, the dry run's stand-in GPU memory, or 4/2/4 off CUDA)",
        ),
        Variant(
            "a-b4",
            "cassr",
            {"tile_batch": 4, "vae_tile_batch": 2, "activation_tile_batch": 4},
            description="(a) with the fixed tile batches before auto: 4 diffusion, 2 VAE, 4 stage-1 tiles per call",
        ),
        Variant(
            "a-per-step-10",
            "cassr",
            {"guidance_mode": "per-step", "steps": 10},
            description="the defaults before the miniature's quality table (per-step guidance, 10 steps)",
        ),
        Variant(
            "a-cached",
            "cassr",
            {"guidance_mode": "cached"},
            description="(a') cassr defaults with cached guidance K/V (the mode a trained adapter runs in)",
        ),
        Variant(
            "a-cached-s5",
            "cassr",
            {"guidance_mode": "cached", "steps": 5},
            description="(a) with cached guidance K/V and 5 steps (a FLOPs candidate from the miniature's table)",
        ),
        Variant(
            "a-s5",
            "cassr",
            {"steps": 5},
            description="(a) with 5 steps",
        ),
        Variant(
            "a-cached-dev",
            "cassr",
            {"guidance_mode": "cached"},
            cache_device_budget=64 * 2**30,
            description="(a') with the whole K/V cache kept on the GPU (no host offload; GPU experiment)",
        ),
        Variant("a-bf16", "cassr", {"dtype": "bf16"}, description="(a) in bf16"),
        Variant(
            "b",
            "cassr",
            {"dtype": "fp32", "tile_batch": 1, "guidance_mode": "per-step"},
            description="(b) optimisations off: fp32, tile batch 1, per-step guidance",
        ),
        Variant(
            "b-batch",
            "cassr",
            {"dtype": "fp32", "guidance_mode": "per-step"},
            description="(b) with tile batch 4 back on: fp32, per-step (isolates precision from batching)",
        ),
        Variant(
            "c",
            "diffusers-x4",
            description="(c) diffusers StableDiffusionUpscalePipeline, same steps as (a), its defaults otherwise (CFG 9, noise 20)",
        ),
        Variant(
            "c-default",
            "diffusers-x4",
            steps="default",
            description="(c) diffusers StableDiffusionUpscalePipeline at its own default step count",
        ),
        Variant("c-20", "diffusers-x4", steps=20, description="(c) diffusers StableDiffusionUpscalePipeline at 20 steps"),
        Variant("d", "cassr", {"steps": 0}, description="(d) stage 1 alone (--steps 0): the floor"),
        Variant(
            "s",
            "cassr",
            {"activation_steps": 20},
            scedit=True,
            description="(s) SCEdit activation (20 sampling steps from noise) then stage 2 at defaults",
        ),
        Variant("s-d", "cassr", {"steps": 0, "activation_steps": 20}, scedit=True, description="(s) SCEdit activation alone (--steps 0)"),
        Variant("a-tb8", "cassr", {"tile_batch": 8}, description="(a) with tile batch 8 (GPU experiment)"),
        Variant("a-host", "cassr", {"canvas": "host"}, description="(a) with the canvases on the host (the path for images too big for the device)"),
        Variant("a-compile", "cassr", {"compile": True}, description="(a) with --compile (torch.compile, CUDA graphs where they apply)"),
        Variant("d-compile", "cassr", {"steps": 0, "compile": True}, description="(d) stage 1 alone with --compile"),
        Variant(
            "a-cached-compile",
            "cassr",
            {"guidance_mode": "cached", "compile": True},
            description="(a') cached guidance with --compile",
        ),
        Variant("a-shift", "cassr", {"tile_shift": True}, description="(a) tiles without overlap, grid shifted every step"),
        Variant("a-refresh2", "cassr", {"guidance_refresh": 2}, description="(a) guidance refreshed every 2nd step"),
        Variant(
            "a-refresh2-shift", "cassr", {"guidance_refresh": 2, "tile_shift": True},
            description="(a) guidance every 2nd step, shifted grid without overlap",
        ),
        Variant(
            "a-refresh5-shift", "cassr", {"guidance_refresh": 5, "tile_shift": True},
            description="(a) guidance every 5th step, shifted grid without overlap",
        ),
        Variant(
            "a-cached-shift", "cassr", {"guidance_mode": "cached", "tile_shift": True},
            description="(a') cached guidance, shifted grid without overlap",
        ),
        Variant(
            "a-cl",
            "cassr",
            channels_last=True,
            description="(a) with the UNet and VAE in channels-last memory format (GPU experiment)",
        ),
    )
}


@dataclass(frozen=True)
class Case:
    """One (workload, variant) to run.

    Attributes:
        warmup: untimed runs first (0: FLOPs are counted in the timed run). diffusers' pipeline warms up
            with a 1-step call on the same input.
        audit: also run once more under ``torch.cuda.set_sync_debug_mode("warn")`` and report every
            host synchronisation by stage and source line (CUDA only; not timed).
    """

    workload: str
    variant: str
    warmup: int = 1
    audit: bool = False


SUITES: dict[str, tuple[Case, ...]] = {
    # One GPU run (benchmarks/gpu_check.sh); the order puts what the targets need first.
    "gpu": (
        Case("512x4", "a", warmup=1, audit=True),
        Case("512x4", "a-b4", warmup=1),
        Case("512x4", "a-host", warmup=1),
        Case("512x4", "d", warmup=1),
        Case("512x4", "a-cached", warmup=1),
        Case("512x4", "a-cached-shift", warmup=1, audit=True),
        Case("512x4", "a-refresh5-shift", warmup=1),
        Case("512x4", "a-shift", warmup=0),
        Case("512x4", "a-refresh2", warmup=0),
        Case("512x4", "c", warmup=1),
        Case("512x4", "b", warmup=0),
        Case("1024x4", "a", warmup=0),
        Case("1024x4", "d", warmup=0),
        Case("512x4", "a-bf16", warmup=1),
        Case("512x4", "a-compile", warmup=2),
        Case("512x4", "a-cached-compile", warmup=2),
        Case("512x4", "c-default", warmup=0),
        Case("1024x4", "a-cached", warmup=0),
    ),
    # The documented CPU run (docs/benchmarks.md): the strip series (time vs pixels, outside-model share),
    # then the comparisons on the 2-tile strip (tile batching needs at least 2 tiles to show anything).
    "cpu": (
        *(Case(f"cpu-strip-{n}", "a", warmup=0) for n in (1, 2, 3, 4)),
        *(Case(f"cpu-strip-{n}", "d", warmup=0) for n in (1, 2, 3, 4)),
        Case("cpu-strip-2", "b", warmup=0),
        Case("cpu-strip-2", "a-cached", warmup=0),
        Case("cpu-strip-2", "a-bf16", warmup=0),
        Case("cpu-strip-2", "c", warmup=0),
    ),
    # FLOPs and host-side cost at full size without a GPU (run with --dry-run): the standard workloads, the
    # size series for host memory, and every comparison whose FLOPs the targets need.
    "dry": (
        Case("256x4", "a", warmup=0),
        Case("512x4", "a", warmup=0),
        Case("1024x4", "a", warmup=0),
        Case("2048x4", "a", warmup=0),
        Case("256x4", "d", warmup=0),
        Case("512x4", "d", warmup=0),
        Case("1024x4", "d", warmup=0),
        Case("2048x4", "d", warmup=0),
        Case("512x4", "a-cached", warmup=0),
        Case("512x4", "s", warmup=0),
        Case("512x4", "s-d", warmup=0),
        Case("1024x4", "s-d", warmup=0),
        Case("512x4", "a-shift", warmup=0),
        Case("512x4", "a-refresh2", warmup=0),
        Case("512x4", "a-refresh2-shift", warmup=0),
        Case("512x4", "a-refresh5-shift", warmup=0),
        Case("512x4", "a-cached-shift", warmup=0),
        Case("512x4", "b", warmup=0),
        Case("512x4", "c", warmup=0),
        Case("512x4", "c-20", warmup=0),
        Case("512x4", "c-default", warmup=0),
        Case("1024x4", "a-cached", warmup=0),
    ),
}
