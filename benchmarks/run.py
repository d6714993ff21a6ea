"""Benchmark entry point: standard workloads, real-size random-weight models, comparisons in one run.

    python -m benchmarks.run --workload 512x4 --device cuda --compare a,b,c,c-default,d
    python -m benchmarks.run --suite gpu --out bench-gpu          # what benchmarks/gpu_check.sh runs
    python -m benchmarks.run --suite cpu --out bench-cpu          # the documented CPU run
    python -m benchmarks.run --workload 512x4 --dry-run --compare a,a-cached,c,d   # FLOPs at full size, no GPU

Every case runs in this one process on the same input (a deterministic synthetic photo), device and
models, so ratios between cases are meaningful even on a busy CPU. Results go to ``--out`` as
``results.json`` and ``results.md`` (rewritten after every case, so a run cut short keeps what it did) and
the Markdown is printed at the end.

Variants (``--compare``): see :data:`benchmarks.workloads.VARIANTS` — ``a`` defaults, ``a-cached``,
``a-bf16``, ``b`` optimisations off, ``b-batch``, ``c`` diffusers' x4 upscaler at the same steps,
``c-default`` at its own default steps, ``d`` stage 1 alone, ``s`` the SCEdit activation then stage 2,
``s-d`` the SCEdit activation alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import report
from benchmarks.components import (
    SHARED_BPE,
    CassrComponents,
    X4Components,
    build_cassr,
    build_tokenizer,
    build_x4,
    x4_default_guidance_scale,
    x4_default_steps,
)
from benchmarks.dryrun import META, OpCounter, host_timesteps
from benchmarks.flops import device_peak
from benchmarks.instrument import ModelMeter
from benchmarks.workloads import SUITES, VARIANTS, WORKLOADS, Case, Variant, Workload

logger = logging.getLogger("benchmarks")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
SEED = 1234


# --- inputs -----------------------------------------------------------------------------------------


def synthetic_photo(height: int, width: int, seed: int = SEED) -> torch.Tensor:
    """A deterministic photo-like ``[1, 3, H, W]`` float32 image in [0, 1]: smooth colour gradients, edges,
    and fine noise (content does not change the speed of these models; it keeps the numbers finite)."""
    g = torch.Generator("cpu").manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    base = torch.stack([0.5 + 0.4 * torch.sin(6 * xx + 2 * yy), 0.5 + 0.3 * torch.cos(5 * yy), 0.3 + 0.5 * xx * yy])
    blocks = ((xx * 8).floor() + (yy * 8).floor()) % 2 * 0.1
    noise = torch.rand((3, height, width), generator=g) * 0.08
    return (base + blocks + noise).clamp(0, 1)[None].contiguous()


# --- models -----------------------------------------------------------------------------------------


class ModelPool:
    """Builds each precision's models once and keeps only the active variant's models on the device
    (the others are parked on the CPU), so device memory peaks are per variant.

    Args:
        size: ``real``, ``tiny`` or ``meta`` (dry run).
        device: the compute device.
    """

    def __init__(self, size: str, device: torch.device) -> None:
        self.size, self.device = size, device
        self.tokenizer, self.tokenizer_source = build_tokenizer(None if size == "tiny" else SHARED_BPE)
        self._cassr: dict[torch.dtype, CassrComponents] = {}
        self._x4: dict[torch.dtype, X4Components] = {}
        self.build_seconds: dict[str, float] = {}

    def _activate(self, keep: object) -> None:
        if self.device.type == "cpu" or self.size == "meta":
            return
        for comps in (*self._cassr.values(), *self._x4.values()):
            if comps is not keep:
                comps.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        keep.to(self.device)  # type: ignore[attr-defined]

    def cassr(self, dtype: torch.dtype) -> CassrComponents:
        if dtype not in self._cassr:
            start = time.perf_counter()
            self._cassr[dtype] = build_cassr(self.size, self.device, dtype, tokenizer=self.tokenizer)
            self.build_seconds[f"cassr-{DTYPE_NAMES[dtype]}"] = time.perf_counter() - start
        self._activate(self._cassr[dtype])
        return self._cassr[dtype]

    def x4(self, dtype: torch.dtype) -> X4Components:
        if dtype not in self._x4:
            start = time.perf_counter()
            self._x4[dtype] = build_x4(self.size, self.device, dtype, tokenizer=self.tokenizer)
            self.build_seconds[f"x4-{DTYPE_NAMES[dtype]}"] = time.perf_counter() - start
        self._activate(self._x4[dtype])
        return self._x4[dtype]


# --- settings ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Options:
    """Run-wide options from the command line."""

    device: torch.device
    dtype: str
    steps: int | None
    dry_run: bool
    size: str
    warmup: int | None
    time_budget: float | None
    device_memory_gib: float = 80.0
    """A dry run's stand-in GPU memory (an H100 SXM's 80 GB by default): auto tile batches are sized from it,
    less the models' weights, as the product sizes them from the free memory a real GPU reports."""


def resolve_dtype(name: str, device: torch.device, *, dry_run: bool) -> torch.dtype:
    """``auto`` = fp16 on CUDA (or in a dry run, which stands for the GPU), fp32 on the CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" or dry_run else torch.float32
    dtype = DTYPES[name]
    if dtype is torch.float16 and device.type == "cpu" and not dry_run:
        raise SystemExit("fp16 does not run on the CPU; use --dtype fp32 or bf16 (or --dry-run)")
    return dtype


def case_settings(workload: Workload, variant: Variant, options: Options) -> dict[str, Any]:
    """UpscaleConfig fields of one case (workload overrides < --dtype/--steps < variant overrides)."""
    settings: dict[str, Any] = {"scale": float(workload.scale), **workload.overrides}
    settings["dtype"] = options.dtype
    if options.steps is not None:
        settings["steps"] = options.steps
    settings.update(variant.overrides)
    return settings


# --- running one case -------------------------------------------------------------------------------


def _unet_stage(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    from cassr_cli.engine.guidance import WritePass

    ctx = (kwargs.get("cross_attention_kwargs") or {}).get("guidance")
    return "guidance" if isinstance(ctx, WritePass) else "denoise"


def run_cassr(pool: ModelPool, meter: ModelMeter, workload: Workload, variant: Variant, case: Case, options: Options, image: torch.Tensor) -> dict[str, Any]:
    """Time one cassr case (after ``warmup`` untimed runs, which also count FLOPs)."""
    from cassr_cli.config import UpscaleConfig
    from cassr_cli.engine.activation import ActivationStage
    from cassr_cli.engine.diffusion import DiffusionSettings, DiffusionStage
    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.runtime.device import Runtime, enable_tf32

    settings = case_settings(workload, variant, options)
    config = UpscaleConfig(**settings)
    dtype = resolve_dtype(config.dtype, options.device, dry_run=options.dry_run)
    dry = options.dry_run
    comps = pool.cassr(dtype)
    base = comps.base
    free = None
    if dry:  # what a GPU of options.device_memory_gib would report free once the models are on it
        free = int(options.device_memory_gib * 2**30) - _weight_bytes(base.unet, base.vae, comps.activation.model)
    runtime = Runtime(META if dry else options.device, dtype, free_memory=free)  # a dry run: meta stands for the GPU
    enable_tf32(runtime)  # as the product does for fp32 on CUDA
    activation: Any
    scedit = None
    if variant.scedit:
        scedit = activation = _scedit_activation(comps, runtime, config)
    else:
        activation = ActivationStage(
            comps.activation,
            scale=comps.activation.scale,
            runtime=runtime,
            dtype=comps.dtype,
            tile_size=config.activation_tile_size,
            tile_overlap=config.activation_tile_overlap,
            tile_batch=config.activation_tile_batch,
        )
    diffusion = None
    audit: dict[str, Any] | None = None
    ops: dict[str, Any] | None = None

    def decode_stage(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        # the SCEdit activation decodes its sample before stage 2 encodes anything
        return "activation-decode" if meter._stage in ("activation", "activation-decode") else "decode"

    try:
        with (
            _compiled(base, scedit.tuner.encoder if scedit is not None else comps.activation.model, runtime.device, config if config.compile else None),
            _memory_format(base, variant.channels_last),
            _cache_budget(variant.cache_device_budget),
            meter.watching(),
        ):
            if scedit is not None:
                meter.watch(scedit.tuned, "forward", "scedit_unet", "activation")
            else:
                meter.watch(activation, "model", "activation", "activation")
            meter.watch(base.vae, "encode", "vae_encode", "encode")
            meter.watch(base.vae, "decode", "vae_decode", decode_stage)
            meter.watch(base.unet, "forward", "unet", _unet_stage)
            meter.watch(base.text_encoder, "forward", "text_encoder", "text")
            if config.steps > 0:
                diffusion = DiffusionStage(base, runtime, DiffusionSettings.from_config(config), backend=config.attention)  # type: ignore[arg-type]
                diffusion.text_conditioning()  # once per run in the product, not per image
            pipeline = CassrPipeline(activation, diffusion, canvas=config.canvas)
            out_size = workload.out_size
            warmup = case.warmup if options.warmup is None else options.warmup

            def run_once() -> Any:
                return pipeline(image, out_size=out_size, generator=torch.Generator("cpu").manual_seed(SEED))

            for _ in range(warmup):
                run_once()
            with meter.run() as record:
                result = run_once()
            if case.audit and options.device.type == "cuda":
                audit = sync_audit(run_once, meter)
            if dry:
                ops = count_ops(run_once, meter)
    finally:
        if diffusion is not None:
            diffusion.close()
        if scedit is not None:
            scedit.close()
    denoise_stats = result.stats.get("denoise", {})
    if denoise_stats.get("guidance_cache_bytes"):
        from cassr_cli.engine import diffusion as engine_diffusion

        budget = variant.cache_device_budget or engine_diffusion.CACHE_DEVICE_BUDGET
        denoise_stats["cache_offloaded_to_host"] = options.device.type == "cuda" and denoise_stats["guidance_cache_bytes"] > budget
    finite = None if dry else bool(torch.isfinite(result.image).all())
    io_stats = measure_io(image, result.image) if not dry and variant.name == "a" else {}
    return {
        "kind": "cassr",
        "settings": {**dataclasses.asdict(config), "resolved_dtype": DTYPE_NAMES[dtype], "activation_dtype": DTYPE_NAMES[comps.dtype]},
        "warmup_runs": warmup,
        "record": record.to_json(),
        "engine_stats": _jsonable(result.stats),
        "output_shape": list(result.image.shape),
        "output_finite": finite,
        "io": io_stats,
        "models": comps.description,
        "channels_last": variant.channels_last,
        "sync_audit": audit,
        "dry_run_ops": ops,
    }


def _scedit_activation(comps: CassrComponents, runtime: Any, config: Any) -> Any:
    """An SCEdit activation on the case's base model with an SCEdit tuner of the default size for it
    (random weights: speed does not depend on them; built on the runtime's device, the meta device in a
    dry run)."""
    from cassr_cli.engine.scedit_activation import SCEditActivation, SCEditSettings
    from cassr_cli.models.scedit import SCEditTuner

    base = comps.base
    with torch.random.fork_rng(devices=[]), torch.device(runtime.device):
        torch.manual_seed(SEED)
        tuner = SCEditTuner.for_unet(base.unet, pixel_factor=base.vae_factor, base_model=base.name)
    return SCEditActivation(base, tuner, runtime, SCEditSettings.from_config(config), scale=config.scale, name="SCEdit (random)")


def _weight_bytes(*modules: Any) -> int:
    """Bytes of the parameters and buffers of ``modules`` (what they occupy on the device)."""
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def count_ops(run_once: Any, meter: ModelMeter) -> dict[str, Any]:
    """One more (untimed) run counting the device operations launched outside model calls."""
    counter = OpCounter(inside=lambda: meter._depth > 0)
    with counter:
        run_once()
    return counter.summary()


@contextlib.contextmanager
def _compiled(base: Any, stage1: torch.nn.Module, device: torch.device, config: Any) -> Iterator[None]:
    """``--compile`` for one variant, as ``CassrPipeline.compile`` does it (on the modules themselves, before
    the meter wraps their methods; each shape compiles at its first call, i.e. in the warm-up runs), undone
    afterwards (the models are shared between variants): the compiled calls dropped, contiguous layout.
    ``stage1`` is the spandrel network, or an SCEdit tuner's condition encoder."""
    if config is None:
        yield
        return
    from cassr_cli.engine.compile import compile_activation, compile_unet, compile_vae
    from cassr_cli.engine.diffusion import DiffusionSettings

    compile_activation(stage1, device)  # compile_tuner does the same to the encoder
    keeps_bank = config.steps > 0 and DiffusionSettings.from_config(config).guidance().keeps_bank
    compile_unet(base.unet, device, keeps_bank=keeps_bank)
    compile_vae(base.vae, device)
    modules = [base.unet, base.vae, base.vae.encoder, base.vae.decoder, stage1]
    try:
        yield
    finally:
        for module in modules:
            module._compiled_call_impl = None
            module.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def _memory_format(base: Any, channels_last: bool) -> Iterator[None]:
    """Run the UNet and VAE in channels-last memory format inside the block (variant ``a-cl``)."""
    if not channels_last:
        yield
        return
    for module in (base.unet, base.vae):
        module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module in (base.unet, base.vae):
            module.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def _cache_budget(budget: int | None) -> Iterator[None]:
    """Variant ``a-cached-dev``: change the engine's device budget for cached K/V inside the block."""
    from cassr_cli.engine import diffusion

    if budget is None:
        yield
        return
    saved = diffusion.CACHE_DEVICE_BUDGET
    diffusion.CACHE_DEVICE_BUDGET = budget
    try:
        yield
    finally:
        diffusion.CACHE_DEVICE_BUDGET = saved


def sync_audit(run_once: Any, meter: ModelMeter) -> dict[str, Any]:
    """Run once with ``torch.cuda.set_sync_debug_mode("warn")``: every operation that makes the host wait
    for the GPU warns; count them per stage and per source line (cassr, diffusers or spandrel frames)."""
    import traceback
    import warnings
    from collections import Counter

    counts: Counter[tuple[str, str]] = Counter()

    def hook(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "synchroniz" not in str(message):
            return
        stack = traceback.extract_stack()[:-1]
        if any(f.filename.endswith("instrument.py") and f.name in ("_switch", "_sync") for f in stack):
            return  # the meter's own once-per-stage synchronisation, not the engine's
        frames = [f for f in stack if any(k in f.filename for k in ("cassr_cli", "diffusers", "spandrel"))]
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-3:])) or f"{Path(filename).name}:{lineno}"
        counts[(meter._stage or "none", where)] += 1

    with warnings.catch_warnings(), meter.run():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_once()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    per_stage: Counter[str] = Counter()
    for (stage, _), n in counts.items():
        per_stage[stage] += n
    return {
        "total": sum(counts.values()),
        "per_stage": dict(per_stage),
        "sites": [{"stage": st, "where": w, "count": n} for (st, w), n in counts.most_common(30)],
    }


def run_x4(pool: ModelPool, meter: ModelMeter, workload: Workload, variant: Variant, case: Case, options: Options, image: torch.Tensor) -> dict[str, Any]:
    """Time diffusers' StableDiffusionUpscalePipeline on the same input."""
    settings = case_settings(workload, variant, options)
    dtype = resolve_dtype(str(settings["dtype"]), options.device, dry_run=options.dry_run)
    from cassr_cli.config import UpscaleConfig

    same_steps = int(settings.get("steps", UpscaleConfig().steps))
    steps = x4_default_steps() if variant.steps == "default" else (same_steps if variant.steps == "same" else int(variant.steps))
    comps = pool.x4(dtype)
    pipe = comps.pipeline
    warmup = case.warmup if options.warmup is None else options.warmup
    dry = options.dry_run
    ops: dict[str, Any] | None = None

    def call() -> Any:
        return pipe(prompt="", image=image, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images

    on_host = host_timesteps(pipe.scheduler) if dry else contextlib.nullcontext()
    with on_host, _execution_device(pipe, META if dry else None), meter.watching():
        meter.watch(pipe.unet, "forward", "unet", "denoise")
        meter.watch(pipe.vae, "decode", "vae_decode", "decode")
        meter.watch(pipe.text_encoder, "forward", "text_encoder", "text")
        for _ in range(warmup):  # a 1-step call loads every kernel the timed call uses
            pipe(prompt="", image=image, num_inference_steps=1, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt")
        with meter.run() as record:
            out = call()
        if dry:
            ops = count_ops(call, meter)
    return {
        "kind": "diffusers-x4",
        "settings": {
            "num_inference_steps": steps,
            "guidance_scale": x4_default_guidance_scale(),
            "noise_level": 20,
            "dtype": DTYPE_NAMES[dtype],
            "vae_decode_dtype": "fp32 (pipeline upcasts the VAE)" if dtype is torch.float16 else DTYPE_NAMES[dtype],
        },
        "warmup_runs": warmup,
        "warmup_steps": 1 if warmup else 0,
        "record": record.to_json(),
        "engine_stats": {},
        "output_shape": list(out.shape),
        "output_finite": None if dry else bool(torch.isfinite(out.cpu()).all()),
        "io": {},
        "models": comps.description,
        "dry_run_ops": ops,
    }


@contextlib.contextmanager
def _execution_device(pipe: Any, device: torch.device | None) -> Iterator[None]:
    """Dry run only: make the pipeline run its own tensor work on ``device`` (the meta device, where its
    models live; diffusers would otherwise take the CPU as its execution device)."""
    if device is None:
        yield
        return
    original = type(pipe)
    pipe.__class__ = type(f"DryRun{original.__name__}", (original,), {"_execution_device": property(lambda self: device)})
    try:
        yield
    finally:
        pipe.__class__ = original


def measure_io(image: torch.Tensor, output: torch.Tensor) -> dict[str, float]:
    """The I/O stage as the runner does it: read the input PNG, encode the output PNG and write it
    atomically (the runner overlaps both with the next image's compute, so they are reported apart)."""
    from cassr_cli.io.image import encode_image, read_image, write_atomic

    def to_hwc(t: torch.Tensor) -> Any:
        return t[0].permute(1, 2, 0).contiguous().numpy()

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.png"
        src.write_bytes(encode_image(to_hwc(image), None, fmt="png", bit_depth=8, is_gray=False, quality=95, icc_profile=None, exif=None))
        t0 = time.perf_counter()
        read_image(src, max_pixels=10**9)
        t1 = time.perf_counter()
        data = encode_image(to_hwc(output), None, fmt="png", bit_depth=8, is_gray=False, quality=95, icc_profile=None, exif=None)
        write_atomic(Path(tmp) / "out.png", data)
        t2 = time.perf_counter()
    return {"read_seconds": t1 - t0, "write_seconds": t2 - t1, "output_png_bytes": len(data)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --- the run ----------------------------------------------------------------------------------------


def environment(device: torch.device, dry_run: bool) -> dict[str, Any]:
    """Device, peak table entry, package versions, machine."""
    from cassr_cli.runtime.report import environment_report

    env = environment_report()
    peak = device_peak(torch.device("cuda") if device.type == "cuda" else device)
    return {
        "device": str(device),
        "device_name": peak.name,
        "peak_tflops_dense_fp16_bf16": peak.tflops,
        "peak_source": peak.source,
        "dry_run": dry_run,
        "packages": {k: v for k, v in env["packages"].items() if v},
        "python": env["python"],
        "platform": env["platform"],
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": env["cuda"],
        "attention": env["attention"],
    }


def cases_from_args(args: argparse.Namespace) -> list[Case]:
    if args.suite:
        return list(SUITES[args.suite])
    variants = [v.strip() for v in args.compare.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    out = []
    for name in args.workload.split(","):
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}")
        out += [Case(name, v, warmup=1 if args.device.startswith("cuda") else 0) for v in variants]
    return out


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    yield


def run_cases(cases: Sequence[Case], options: Options, out_dir: Path | None, command: str) -> dict[str, Any]:
    """Run ``cases`` in order; write JSON + Markdown after each; return the results document."""
    start = time.perf_counter()
    doc: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "environment": environment(options.device, options.dry_run),
        "options": {k: str(v) for k, v in dataclasses.asdict(options).items()},
        "workloads": {},
        "cases": [],
        "skipped": [],
    }
    pool = ModelPool(options.size, options.device)
    doc["environment"]["tokenizer"] = pool.tokenizer_source
    doc["environment"]["text_encoder_note"] = (
        "text encoding runs once per run (cassr caches it per stage); its size does not change per-image speed"
    )
    meter = ModelMeter(options.device)
    images: dict[str, torch.Tensor] = {}
    for case in cases:
        workload, variant = WORKLOADS[case.workload], VARIANTS[case.variant]
        elapsed = time.perf_counter() - start
        if options.time_budget is not None and elapsed > options.time_budget:
            doc["skipped"].append({"workload": case.workload, "variant": case.variant, "reason": f"time budget ({elapsed:.0f} s used)"})
            continue
        doc["workloads"][workload.name] = {
            "input": [workload.height, workload.width],
            "output": list(workload.out_size),
            "scale": workload.scale,
            "overrides": dict(workload.overrides),
            "description": workload.description,
        }
        if workload.name not in images:
            images[workload.name] = synthetic_photo(workload.height, workload.width)
        print(f"[{time.perf_counter() - start:7.1f}s] {workload.name} / {variant.name}: {variant.description}", file=sys.stderr, flush=True)
        runner = run_cassr if variant.kind == "cassr" else run_x4
        try:
            with torch.inference_mode():
                result = runner(pool, meter, workload, variant, case, options, images[workload.name])
        except Exception as err:  # a failed case is recorded, the run goes on
            logger.exception("case %s/%s failed", workload.name, variant.name)
            doc["skipped"].append({"workload": case.workload, "variant": case.variant, "reason": f"{type(err).__name__}: {err}"})
            if options.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        result.update({"workload": workload.name, "variant": variant.name, "description": variant.description})
        report.add_derived(result, doc["environment"], workload)
        doc["cases"].append(result)
        rec = result["record"]
        print(
            f"           wall {rec['wall_seconds']:.2f} s, model {rec['model_seconds']:.2f} s, "
            f"{rec['flops'] / 1e12:.2f} TFLOP, outside share {rec['outside_model_share']:.1%}",
            file=sys.stderr,
            flush=True,
        )
        doc["build_seconds"] = dict(pool.build_seconds)
        doc["total_seconds"] = time.perf_counter() - start
        if out_dir is not None:
            write(doc, out_dir)
    doc["build_seconds"] = dict(pool.build_seconds)
    doc["total_seconds"] = time.perf_counter() - start
    doc["analysis"] = report.analyse(doc)
    if out_dir is not None:
        write(doc, out_dir)
    return doc


def write(doc: dict[str, Any], out_dir: Path) -> None:
    """``results.json`` and ``results.md`` in ``out_dir`` (atomically replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(doc, indent=1, default=str)), ("results.md", report.markdown(doc))):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="512x4", help=f"comma-separated; one of {', '.join(WORKLOADS)}")
    parser.add_argument("--compare", default="a,b,c,c-default,d", help=f"comma-separated variants: {', '.join(VARIANTS)}")
    parser.add_argument("--suite", choices=sorted(SUITES), help="a predefined list of (workload, variant) cases")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="compute dtype of variants that do not set one")
    parser.add_argument("--steps", type=int, help="override the workload's diffusion steps (variant d always runs 0)")
    parser.add_argument("--warmup", type=int, help="untimed runs before each timed run (default: the suite's; 1 on CUDA, 0 on CPU)")
    parser.add_argument("--dry-run", action="store_true", help="meta-device models: exact FLOPs and host-side cost at any size, no model compute")
    parser.add_argument(
        "--device-memory-gib", type=float, default=80.0,
        help="dry run: the stand-in GPU's memory, from which auto tile batches are sized (default 80, an H100 SXM)",
    )
    parser.add_argument("--models", choices=["real", "tiny"], default="real", help="real-size random-weight models, or toy ones (smoke test)")
    parser.add_argument("--time-budget", type=float, help="skip the remaining cases once this many seconds have passed")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="directory for results.json and results.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --device cpu or --dry-run")
    if args.suite == "dry":
        args.dry_run = True
    if args.dry_run:
        device = torch.device("cpu")
    options = Options(
        device=device,
        dtype=args.dtype,
        steps=args.steps,
        dry_run=args.dry_run,
        size="meta" if args.dry_run else args.models,
        warmup=0 if args.dry_run else args.warmup,
        time_budget=args.time_budget,
        device_memory_gib=args.device_memory_gib,
    )
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    with _quiet_libraries():
        doc = run_cases(cases_from_args(args), options, args.out, command)
    print(report.markdown(doc))
    return doc


if __name__ == "__main__":
    main()
