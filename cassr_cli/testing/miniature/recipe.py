"""The whole recipe, part by part, resumable: ``vae`` → ``unet`` → ``adapter`` → ``evaluate``.

Output folder::

    OUT/base/                   the diffusers folder (model_index.json, unet/, vae/, text_encoder/,
                                tokenizer/, scheduler/), weights as *.fp16.safetensors
    OUT/adapter.safetensors     the trained multi-attention adapter
    OUT/report.json             spec, split, per-part wall time and load, measurements
    OUT/parts/<part>/           checkpoints while a part runs, done.json when it has finished

A finished part is never redone; an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cassr_cli.testing.miniature.adapter_part import ADAPTER_FILE, train_adapter, train_config
from cassr_cli.testing.miniature.data import load_images, split_bsd100
from cassr_cli.testing.miniature.evaluate import evaluate
from cassr_cli.testing.miniature.models import write_scheduler_and_index
from cassr_cli.testing.miniature.spec import RecipeSpec
from cassr_cli.testing.miniature.state import Part, note
from cassr_cli.testing.miniature.unet_part import train_unet
from cassr_cli.testing.miniature.vae_part import train_vae

REPORT = "report.json"


@dataclass(frozen=True)
class Inputs:
    """What the recipe reads: the BSD100 ×4 folder, the activation model and CLIP's BPE merges file."""

    data: Path
    activation: Path
    bpe: Path


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def run_recipe(out_dir: Path, inputs: Inputs, spec: RecipeSpec) -> dict[str, Any]:
    """Run (or continue) every part into ``out_dir``; returns the report (also written to ``report.json``)."""
    from cassr_cli.engine.base_model import quiet_loading

    with quiet_loading():
        return _run(out_dir, inputs, spec)


def parameter_counts(base: Path, adapter_file: Path) -> dict[str, int]:
    """Parameters of each shipped model."""
    from cassr_cli.models.adapter import MultiAttentionAdapter
    from cassr_cli.testing.miniature.models import load_text, load_unet, load_vae

    def count(model: Any) -> int:
        return sum(p.numel() for p in model.parameters())

    adapter, _ = MultiAttentionAdapter.load(adapter_file)
    return {"vae": count(load_vae(base)), "unet": count(load_unet(base)), "text_encoder": count(load_text(base)[0]), "adapter": count(adapter)}


def _run(out_dir: Path, inputs: Inputs, spec: RecipeSpec) -> dict[str, Any]:
    torch.manual_seed(spec.seed)  # nothing should draw from the global RNG; this pins it if something does
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / "base"
    base.mkdir(exist_ok=True)
    write_scheduler_and_index(base)
    split = split_bsd100(inputs.data)
    note(f"data: {len(split.train)} training / {len(split.validation)} validation images from {inputs.data}")
    train_images = load_images(split.train)
    validation_images = load_images(split.validation)
    parts: dict[str, dict[str, Any]] = {}
    loads: dict[str, dict[str, list[float]]] = {}

    def run_part(name: str, fn: Any) -> None:
        part = Part(out_dir, name)
        record = part.done()
        if record is None:
            note(f"{name}: starting (load average {_load()})")
            started = _load()
            record = fn(part)
            record["load_average_start"], record["load_average_end"] = started, _load()
            (part.folder / "done.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        else:
            note(f"{name}: already done ({record['seconds'] / 60:.1f} min), skipped")
        parts[name] = record
        loads[name] = {"start": record.get("load_average_start", []), "end": record.get("load_average_end", [])}

    run_part("vae", lambda part: train_vae(spec, train_images, validation_images, part, base))
    run_part("unet", lambda part: train_unet(spec, Part(out_dir, "vae").folder, part, base, inputs.bpe))
    run_part("adapter", lambda part: train_adapter(spec, part, base, inputs.activation, split.train, out_dir))
    adapter_config = train_config(spec, base, inputs.activation, split.train, Part(out_dir, "adapter").folder / "run")
    run_part(
        "evaluate",
        lambda part: evaluate(spec, part, base, out_dir / ADAPTER_FILE, adapter_config, train_images, validation_images, split.validation),
    )
    report = {
        "spec": spec.as_dict(),
        "parameters": parameter_counts(base, out_dir / ADAPTER_FILE),
        "split": {"train": [p.name for p in split.train], "validation": [p.name for p in split.validation]},
        "seconds": {name: record["seconds"] for name, record in parts.items()},
        "cpu_seconds": {name: record.get("cpu_seconds") for name, record in parts.items()},
        "total_minutes": round(sum(record["seconds"] for record in parts.values()) / 60, 1),
        "parts": parts,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "finished": time.strftime("%Y-%m-%d"),
        },
    }
    (out_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    note(f"all parts done: {report['seconds']} s, {report['total_minutes']} min in all")
    return report
