"""Derived numbers (per-stage rows, ratios, linear fits, targets) and the Markdown rendering of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

GIB = 2**30
H100_PEAK_TFLOPS = 989.4
"""Dense bf16/fp16 peak of an H100 SXM (and of an H200) used for the arithmetic estimates."""

TARGETS = {
    "end_to_end_seconds": 2.0,
    "denoise_fraction_of_peak": 0.30,
    "peak_vram_bytes": 8 * 10**9,
    "speedup_vs_diffusers": 10.0,
}
"""Issue 6's targets for 512² → 2048² at default settings on an H100/H200."""

CASSR_STAGES = ("activation", "encode", "guidance", "denoise", "decode", "colorfix")


# --- per case ---------------------------------------------------------------------------------------


def add_derived(result: dict[str, Any], env: dict[str, Any], workload: Any) -> None:
    """Add ``stages`` (rows of the per-stage table) and ``summary`` to one case result, in place."""
    rec = result["record"]
    peak = env.get("peak_tflops_dense_fp16_bf16")
    dry = bool(env.get("dry_run"))
    meter_stages = rec["stages"]
    seg_walls = rec["segment_walls"]
    seg_peaks = rec["segment_peaks"]
    base_host = rec["host_baseline_bytes"]
    rows: list[dict[str, Any]] = []

    def row(name: str, wall: float | None, model: dict[str, Any] | None, device_peak: int | None, host_peak: int | None, note: str = "") -> None:
        model = model or {}
        flops = int(model.get("flops", 0))
        seconds = float(model.get("seconds", 0.0))
        r: dict[str, Any] = {
            "stage": name,
            "wall_seconds": wall,
            "model_seconds": None if dry else seconds,
            "outside_seconds": None if wall is None else (wall - seconds if not dry else wall - seconds),
            "calls": int(model.get("calls", 0)),
            "rows": int(model.get("rows", 0)),
            "flops": flops,
            "uncounted_calls": int(model.get("uncounted_calls", 0)),
            "tflops_per_s": None if dry or not wall or not flops else flops / wall / 1e12,
            "device_peak_bytes": device_peak,
            "host_peak_delta_bytes": None if host_peak is None else host_peak - base_host,
            "note": note,
        }
        r["fraction_of_peak"] = None if r["tflops_per_s"] is None or not peak else r["tflops_per_s"] / peak
        rows.append(r)

    def merged(*names: str) -> dict[str, Any]:
        out = {"flops": 0, "seconds": 0.0, "calls": 0, "rows": 0, "uncounted_calls": 0}
        for n in names:
            for k in out:
                out[k] += meter_stages.get(n, {}).get(k, 0)
        return out

    if result["kind"] == "cassr":
        stats = result["engine_stats"]
        for name in CASSR_STAGES:
            if name not in stats:
                continue
            s = stats[name]
            if name == "guidance":
                if s.get("mode") != "cached":
                    continue
                row("  of which guidance pass", s.get("seconds"), merged("guidance"), None, None, "cached K/V, inside denoise")
                continue
            wall = float(s.get("seconds", 0.0))
            model: dict[str, Any] | None
            note = ""
            if name == "activation" and s.get("kind") == "scedit":
                model = merged("activation", "activation-decode")
                note = (
                    f"SCEdit: {s.get('tiles')} tiles × {s.get('steps')} steps, batch {s.get('tile_batch')}, "
                    f"incl. decode {s.get('decode_tiles')} tiles {s.get('decode_seconds', 0):.3f} s"
                )
                sampled = merged("activation")
                if s.get("unet_calls") != sampled["calls"] or s.get("unet_rows") != sampled["rows"]:
                    note += f"; MISMATCH engine {s.get('unet_calls')} calls/{s.get('unet_rows')} rows"
            elif name == "activation":
                wall += float(s.get("resize_seconds", 0.0))
                model = merged("activation")
                note = f"{s.get('tiles')} tiles, incl. resize {s.get('resize_seconds', 0):.3f} s"
            elif name == "denoise":
                model = merged("denoise", "guidance")
                note = f"{s.get('tiles')} tiles × {s.get('steps')} steps, batch {s.get('tile_batch')}, {s.get('guidance_mode')}"
                if s.get("guidance_cache_bytes"):
                    note += f", K/V cache {s['guidance_cache_bytes'] / GIB:.2f} GiB"
                    if s.get("cache_offloaded_to_host"):
                        note += " (in pinned host memory)"
                if s.get("unet_calls") != model["calls"] or s.get("unet_rows") != model["rows"]:
                    note += f"; MISMATCH engine {s.get('unet_calls')} calls/{s.get('unet_rows')} rows"
            elif name == "encode":
                model = merged("encode")
            elif name == "decode":
                model = merged("decode")
                if s.get("fp32_retries"):
                    note = f"{s['fp32_retries']} fp32 retries"
            else:
                model = None
            host = seg_peaks.get(name, {}).get("host") if name != "colorfix" else None
            if name == "denoise" and "guidance" in seg_peaks:
                host = max(host or 0, seg_peaks["guidance"]["host"])
            row(name, wall, model, s.get("peak_memory_bytes"), host, note)
    else:
        for name in ("text", "denoise", "decode"):
            if name in meter_stages:
                row(name, seg_walls.get(name), meter_stages[name], seg_peaks.get(name, {}).get("device_allocated"), seg_peaks.get(name, {}).get("host"))
    io = result.get("io") or {}
    if io:
        row("io (read + PNG write)", io["read_seconds"] + io["write_seconds"], None, None, None, "overlapped with compute by the runner")
    result["stages"] = rows

    wall = rec["wall_seconds"]
    unet = rec["models"].get("unet", {})
    scedit_unet = rec["models"].get("scedit_unet", {})
    denoise = next((r for r in rows if r["stage"] == "denoise"), None)
    engine_peak = max((int(s.get("peak_memory_bytes") or 0) for s in result["engine_stats"].values() if isinstance(s, dict)), default=0)
    result["summary"] = {
        "wall_seconds": wall,
        "cpu_seconds": rec["cpu_seconds"],
        "flops": rec["flops"],
        "tflops_per_s": None if dry or not wall else rec["flops"] / wall / 1e12,
        "fraction_of_peak": None if dry or not peak or not wall else rec["flops"] / wall / 1e12 / peak,
        "denoise_fraction_of_peak": None if denoise is None else denoise["fraction_of_peak"],
        "outside_model_share": None if dry else rec["outside_model_share"],
        "outside_model_seconds": rec["outside_model_seconds"],
        "unet_calls": int(unet.get("calls", 0)),
        "unet_rows": int(unet.get("rows", 0)),
        "activation_unet_calls": int(scedit_unet.get("calls", 0)),
        "activation_unet_rows": int(scedit_unet.get("rows", 0)),
        "device_peak_allocated_bytes": max(rec["device_peak_allocated_bytes"], engine_peak),
        "device_peak_reserved_bytes": rec["device_peak_reserved_bytes"],
        "host_peak_delta_bytes": rec["host_peak_delta_bytes"],
        "out_pixels": workload.out_pixels,
        "device_ops_outside_models": (result.get("dry_run_ops") or {}).get("device_ops"),
        "outside_model_cpu_seconds": rec.get("outside_model_cpu_seconds"),
        "outside_model_cpu_seconds_less_device_ops": _less_device_ops(rec.get("outside_model_cpu_seconds"), result.get("dry_run_ops")),
    }


def _less_device_ops(cpu_seconds: float | None, ops: dict[str, Any] | None) -> float | None:
    """A dry run's CPU time outside model calls less the time its device operations took on the meta device
    (measured in the op-counting run; see ``benchmarks/dryrun.py``)."""
    if cpu_seconds is None or not ops or ops.get("device_op_seconds") is None:
        return None
    return max(0.0, cpu_seconds - ops["device_op_seconds"])


# --- across cases -----------------------------------------------------------------------------------


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float] | None:
    """Least-squares ``y = intercept + slope·x`` with R² (None for fewer than 2 distinct x)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def _find(doc: dict[str, Any], workload: str, variant: str) -> dict[str, Any] | None:
    return next((c for c in doc["cases"] if c["workload"] == workload and c["variant"] == variant), None)


def analyse(doc: dict[str, Any]) -> dict[str, Any]:
    """Ratios inside the run, linear fits of the strip series, targets, and FLOP arithmetic."""
    out: dict[str, Any] = {"comparisons": [], "scaling": {}, "targets": [], "arithmetic": []}
    dry = bool(doc["environment"].get("dry_run"))
    for workload in dict.fromkeys(c["workload"] for c in doc["cases"]):
        a = _find(doc, workload, "a")
        if a is None:
            continue
        wa = a["summary"]["wall_seconds"]
        for other in ("a-cached", "a-bf16", "b", "b-batch", "c", "c-default", "d", "s", "s-d"):
            o = _find(doc, workload, other)
            if o is None:
                continue
            wo = o["summary"]["wall_seconds"]
            out["comparisons"].append(
                {
                    "workload": workload,
                    "pair": f"{other} / a",
                    "wall_ratio": wo / wa if wa else None,
                    "flop_ratio": o["summary"]["flops"] / a["summary"]["flops"] if a["summary"]["flops"] else None,
                    "steps_a": a["settings"].get("steps"),
                    "steps_other": o["settings"].get("steps", o["settings"].get("num_inference_steps")),
                }
            )
    series_of = {"cpu-strip": lambda w: w.startswith("cpu-strip-"), "standard": lambda w: w in ("256x4", "512x4", "1024x4", "2048x4")}
    for series_name, member in series_of.items():
        members = sorted((c for c in doc["cases"] if member(c["workload"])), key=lambda c: c["summary"]["out_pixels"])
        for variant in dict.fromkeys(c["variant"] for c in members):
            series = [c for c in members if c["variant"] == variant]
            if len(series) < 2:
                continue
            xs = [float(c["summary"]["out_pixels"]) for c in series]
            walls = [c["summary"]["wall_seconds"] for c in series]
            models = [c["record"]["model_seconds"] for c in series]
            outside = [c["summary"]["outside_model_seconds"] for c in series]
            hosts = [float(c["summary"]["host_peak_delta_bytes"]) for c in series]
            out["scaling"][f"{series_name} / {variant}"] = {
                "workloads": [c["workload"] for c in series],
                "out_pixels": xs,
                "wall_seconds": walls,
                "outside_model_seconds": outside,
                "host_peak_delta_bytes": hosts,
                "wall_vs_pixels": linear_fit(xs, walls),
                "model_vs_pixels": linear_fit(xs, models),
                "outside_vs_pixels": linear_fit(xs, outside),
                "host_vs_pixels": linear_fit(xs, hosts),
                "flops_vs_pixels": linear_fit(xs, [float(c["summary"]["flops"]) for c in series]),
                "outside_share": [c["summary"]["outside_model_share"] for c in series],
            }
    env = doc["environment"]
    if env["device"].startswith("cuda") and not dry:
        a512, a1024, c512 = _find(doc, "512x4", "a"), _find(doc, "1024x4", "a"), _find(doc, "512x4", "c")
        if a512 is not None:
            s = a512["summary"]
            out["targets"].append(_target("512²→2048² end to end (s)", s["wall_seconds"], TARGETS["end_to_end_seconds"], "<="))
            if s["denoise_fraction_of_peak"] is not None:
                out["targets"].append(_target("denoise fraction of dense peak", s["denoise_fraction_of_peak"], TARGETS["denoise_fraction_of_peak"], ">="))
        vram = [c["summary"]["device_peak_reserved_bytes"] for c in (a512, a1024) if c is not None]
        if vram:
            out["targets"].append(_target("peak VRAM reserved, 512x4 and 1024x4 (GB)", max(vram) / 1e9, TARGETS["peak_vram_bytes"] / 1e9, "<="))
        if a512 is not None and c512 is not None:
            out["targets"].append(_target("speed-up vs diffusers x4 at equal steps", c512["summary"]["wall_seconds"] / a512["summary"]["wall_seconds"], TARGETS["speedup_vs_diffusers"], ">="))
    for c in doc["cases"]:
        if c["workload"] not in ("512x4", "1024x4"):
            continue
        flops = c["summary"]["flops"]
        denoise = next((r for r in c["stages"] if r["stage"] == "denoise"), None)
        entry = {
            "workload": c["workload"],
            "variant": c["variant"],
            "tflop": flops / 1e12,
            "denoise_tflop": None if denoise is None else denoise["flops"] / 1e12,
            "seconds_at_fraction_of_h100": {f"{int(f * 100)}%": flops / (f * H100_PEAK_TFLOPS * 1e12) for f in (0.3, 0.5, 1.0)},
        }
        out["arithmetic"].append(entry)
    return out


def _target(name: str, value: float, target: float, op: str) -> dict[str, Any]:
    ok = value <= target if op == "<=" else value >= target
    return {"target": name, "measured": value, "goal": f"{op} {target}", "met": ok}


# --- Markdown ---------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 2, scale: float = 1.0, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if pct:
        return f"{value * 100:.{max(digits - 1, 0)}f}%"
    return f"{value / scale:.{digits}f}"


def markdown(doc: dict[str, Any]) -> str:
    """The run as Markdown: environment, one summary table, per-stage tables, analysis."""
    env = doc["environment"]
    dry = bool(env.get("dry_run"))
    lines = [f"# cassr benchmark: {env['device_name']}", ""]
    lines.append(f"- command: `{doc['command']}`")
    lines.append(f"- started {doc['started']}, total {_f(doc.get('total_seconds'), 0)} s (model building {_f(sum(doc.get('build_seconds', {}).values()), 0)} s)")
    peak = env.get("peak_tflops_dense_fp16_bf16")
    lines.append(f"- device `{env['device']}`: {env['device_name']}; dense fp16/bf16 peak used: {peak if peak else 'none (no fraction reported)'} TFLOP/s ({env['peak_source']})")
    pk = env["packages"]
    lines.append("- packages: " + ", ".join(f"{k} {pk[k]}" for k in ("torch", "diffusers", "transformers", "spandrel", "cassr") if k in pk))
    lines.append(f"- tokenizer: {env.get('tokenizer')}; CPU threads {env['cpu_threads']} of {env['cpu_count']}")
    if dry:
        lines.append(
            "- **dry run**: the meta device stood in for the GPU (models, canvases and all engine tensors on it: the device path). "
            "FLOPs, call counts, host work outside model calls (time, memory) and device operations launched outside model calls "
            "are real; model time is not."
        )
    lines.append("")
    lines.append("## Cases")
    lines.append("")
    ops_column = " outside models, CPU s | of it not device ops, ms | device launches outside models |" if dry else ""
    lines.append("| workload | variant | wall s | TFLOP | TFLOP/s | % peak | UNet calls / rows | outside models |" + ops_column + " peak device alloc / reserved GiB | host peak Δ GiB | load avg |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if dry else "") + "---:|---:|---:|")
    for c in doc["cases"]:
        s = c["summary"]
        load = c["record"].get("load_average")
        lines.append(
            f"| {c['workload']} | {c['variant']} | {_f(s['wall_seconds'])} | {_f(s['flops'], 2, 1e12)} | {_f(s['tflops_per_s'])} | "
            f"{_f(s['fraction_of_peak'], 2, pct=True)} | {s['unet_calls']} / {s['unet_rows']} | "
            f"{_f(s['outside_model_share'], 2, pct=True) if not dry else _f(s['outside_model_seconds']) + ' s'} | "
            + (
                f"{_f(s.get('outside_model_cpu_seconds'))} s | {_f(s.get('outside_model_cpu_seconds_less_device_ops'), 1, 1e-3)} | "
                f"{s.get('device_ops_outside_models')} | "
                if dry
                else ""
            )
            + f"{_f(s['device_peak_allocated_bytes'], 2, GIB)} / {_f(s['device_peak_reserved_bytes'], 2, GIB)} | "
            f"{_f(s['host_peak_delta_bytes'], 2, GIB)} | {_f(load[0], 1) if load else '–'} |"
        )
    lines.append("")
    lines.append("Variants: " + "; ".join(dict.fromkeys(f"`{c['variant']}` {c['description']}" for c in doc["cases"])))
    for sk in doc.get("skipped", []):
        lines.append(f"- skipped {sk['workload']}/{sk['variant']}: {sk['reason']}")
    lines.append("")
    for c in doc["cases"]:
        lines.append(f"### {c['workload']} / {c['variant']}")
        lines.append("")
        settings = c["settings"]
        keys = ("resolved_dtype", "steps", "strength", "scheduler", "guidance_mode", "tile_size", "tile_overlap", "tile_batch", "vae_tile_size", "activation_tile_size", "num_inference_steps", "guidance_scale", "dtype", "vae_decode_dtype")
        lines.append("settings: " + ", ".join(f"{k}={settings[k]}" for k in keys if k in settings) + f"; warm-up runs {c['warmup_runs']}; output {c['output_shape']}, finite={c['output_finite']}")
        lines.append("")
        lines.append("| stage | wall s | model s | outside s | calls | rows | TFLOP | TFLOP/s | % peak | device peak GiB | host peak Δ GiB | note |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in c["stages"]:
            lines.append(
                f"| {r['stage']} | {_f(r['wall_seconds'], 3)} | {_f(r['model_seconds'], 3)} | {_f(r['outside_seconds'], 3)} | {r['calls']} | {r['rows']} | "
                f"{_f(r['flops'], 3, 1e12)} | {_f(r['tflops_per_s'])} | {_f(r['fraction_of_peak'], 2, pct=True)} | {_f(r['device_peak_bytes'], 2, GIB)} | "
                f"{_f(r['host_peak_delta_bytes'], 3, GIB)} | {r['note']} |"
            )
        rec = c["record"]
        audit = c.get("sync_audit")
        lines_after = []
        if audit:
            lines_after.append("")
            lines_after.append(f"Host synchronisations (sync audit, one extra untimed run): {audit['total']} in all; per stage " + ", ".join(f"{k} {v}" for k, v in audit["per_stage"].items()))
            lines_after += [f"- {x['count']}× {x['stage']}: `{x['where']}`" for x in audit["sites"][:12]]
        lines.append(f"| **total** | {_f(rec['wall_seconds'], 3)} | {_f(None if dry else rec['model_seconds'], 3)} | {_f(rec['outside_model_seconds'], 3)} | | | {_f(rec['flops'], 3, 1e12)} | | | | {_f(rec['host_peak_delta_bytes'], 3, GIB)} | head {_f(rec['head_seconds'], 3)} s, tail {_f(rec['tail_seconds'], 3)} s |")
        lines += lines_after
        lines.append("")
    analysis = doc.get("analysis") or {}
    if analysis.get("comparisons"):
        lines += ["## Comparisons (same run, same input, same device)", "", "| workload | ratio | wall ratio | FLOP ratio | steps (a / other) |", "|---|---|---:|---:|---|"]
        for r in analysis["comparisons"]:
            lines.append(f"| {r['workload']} | {r['pair']} | {_f(r['wall_ratio'])} | {_f(r['flop_ratio'])} | {r['steps_a']} / {r['steps_other']} |")
        lines.append("")
    if analysis.get("scaling"):
        lines += ["## Scaling with the output size (least-squares fits y = a + b·pixels)", ""]
        lines += [
            "| series / variant | sizes (Mpx) | wall: b µs/px, a s, R² | outside models: b µs/px, a s, R² | host peak Δ: b B/px, a MiB, R² | FLOPs R² | outside share per size |",
            "|---|---|---|---|---|---|---|",
        ]
        for v, s in analysis["scaling"].items():
            w, o, h, fl = s["wall_vs_pixels"], s["outside_vs_pixels"], s["host_vs_pixels"], s["flops_vs_pixels"]
            lines.append(
                f"| {v} | {', '.join(_f(x, 2, 1e6) for x in s['out_pixels'])} | "
                f"{_f(w and w['slope'] * 1e6, 3)}, {_f(w and w['intercept'], 2)}, {_f(w and w['r2'], 4)} | "
                f"{_f(o and o['slope'] * 1e6, 3)}, {_f(o and o['intercept'], 2)}, {_f(o and o['r2'], 4)} | "
                f"{_f(h and h['slope'], 1)}, {_f(h and h['intercept'] / 2**20, 1)}, {_f(h and h['r2'], 3)} | {_f(fl and fl['r2'], 4)} | "
                + ", ".join(_f(x, 2, pct=True) for x in s["outside_share"])
                + " |"
            )
        lines.append("")
    if analysis.get("targets"):
        lines += ["## Targets (issue 6)", "", "| target | measured | goal | met |", "|---|---:|---|---|"]
        for t in analysis["targets"]:
            lines.append(f"| {t['target']} | {_f(t['measured'], 3)} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    if analysis.get("arithmetic"):
        lines += [
            "## Arithmetic from the counted FLOPs (not a measurement)",
            "",
            f"Seconds the counted FLOPs would take at a fraction of an H100 SXM's {H100_PEAK_TFLOPS} dense TFLOP/s.",
            "",
            "| workload | variant | TFLOP | of which denoise | at 30% | at 50% | at 100% |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in analysis["arithmetic"]:
            t = r["seconds_at_fraction_of_h100"]
            lines.append(f"| {r['workload']} | {r['variant']} | {_f(r['tflop'], 1)} | {_f(r['denoise_tflop'], 1)} | {_f(t['30%'])} | {_f(t['50%'])} | {_f(t['100%'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"
