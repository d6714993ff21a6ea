"""Part 3: the multi-attention adapter, trained by ``cassr train`` itself (a subprocess running the CLI,
so it is exactly the command's code path: Real-ESRGAN second-order degradations, the activation model,
accelerate) on the exported base folder. The config it runs is written to ``parts/adapter/train.toml``;
the run resumes from its own latest checkpoint after an interruption (``--resume latest``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from cassr_cli.testing.miniature.spec import RecipeSpec
from cassr_cli.testing.miniature.state import Part, note

ADAPTER_FILE = "adapter.safetensors"


def train_config(spec: RecipeSpec, base: Path, activation: Path, train_files: tuple[Path, ...], run_dir: Path) -> Any:
    """The :class:`~cassr_cli.training.config.TrainConfig` of the adapter run (absolute paths)."""
    from cassr_cli.training.config import (
        AdapterConfig,
        DataConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
        TrainLoopConfig,
    )

    a = spec.adapter
    return TrainConfig(
        output_dir=str(run_dir.resolve()),
        seed=spec.seed,
        data=DataConfig(hr_dirs=tuple(str(p.resolve()) for p in train_files), crop_size=a.crop, scale=4, num_workers=0),
        model=ModelConfig(base_model=str(base.resolve()), activation=str(activation.resolve())),
        adapter=AdapterConfig(rank=a.rank, guidance_timestep=a.guidance_timestep),
        optim=OptimConfig(learning_rate=a.learning_rate, warmup_steps=a.warmup),
        train=TrainLoopConfig(
            max_steps=a.steps, batch_size=a.batch, ema_decay=a.ema_decay, checkpoint_every=a.checkpoint_every,
            keep_checkpoints=1, log_every=10, cpu=True,
        ),
    )


def train_adapter(spec: RecipeSpec, part: Part, base: Path, activation: Path, train_files: tuple[Path, ...], out_dir: Path) -> dict[str, Any]:
    """Run ``cassr train`` (resuming its own checkpoints) and copy the result to ``out_dir/adapter.safetensors``."""
    from cassr_cli.training.checkpoint import list_checkpoints
    from cassr_cli.training.config import to_toml

    run_dir = part.folder / "run"
    config_file = part.folder / "train.toml"
    config = train_config(spec, base, activation, train_files, run_dir)
    config_file.write_text(to_toml(config, header="miniature adapter: written by python -m cassr_cli.testing.miniature"), encoding="utf-8")
    command = [sys.executable, "-m", "cassr_cli", "train", str(config_file)]
    if list_checkpoints(run_dir):
        command += ["--resume", "latest"]
        note("adapter: resuming cassr train from its latest checkpoint")
    state = part.load_checkpoint() or {}  # only the seconds spent by earlier, interrupted runs
    note("adapter: " + " ".join(command[1:]))
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])  # this cassr_cli, also in the child
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    try:
        subprocess.run(command, check=True, env=env)
    finally:
        part.save_checkpoint({"step": state.get("step", 0)})
    shutil.copyfile(run_dir / ADAPTER_FILE, out_dir / ADAPTER_FILE)
    return part.finish({"steps": spec.adapter.steps, "log": _log_summary(run_dir / "train_log.jsonl")})


def _log_summary(path: Path) -> dict[str, Any]:
    """First and last logged losses and the median seconds per step of ``train_log.jsonl``."""
    import json
    import statistics

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        return {}
    return {
        "loss_first": records[0]["loss"],
        "loss_last": records[-1]["loss"],
        "seconds_per_step_median": statistics.median(r["seconds_per_step"] for r in records),
        "records": len(records),
    }
