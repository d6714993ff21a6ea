"""Setup the training tests share: photo-like images, the small CPU training config of the adapter and
SCEdit tests, the fixed degraded batch they measure losses on, a bf16 run of the real entry point and a
two-rank torchrun launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cassr_cli.training.config import TrainConfig, load_train_config, to_toml
from cassr_cli.training.data import CropDataset, degrade_batch, find_training_images, generator_for


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image, uint8 ``[height, width, 3]``, photo-like enough for crops and
    degradations."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, height // 8), max(2, width // 8), generator=g)
    big = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return (big[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def write_photos(root: Path, seed: int) -> Path:
    """Four HR photos ``p0..p3.png`` (80² to 104×96, seeds ``seed..seed+3``) in ``root``, and a 16² LR
    validation image ``val.png`` (seed ``seed+9``) beside it; returns ``root``."""
    for i in range(4):
        Image.fromarray(photo(80 + 8 * i, 96, seed + i)).save(root / f"p{i}.png")
    Image.fromarray(photo(16, 16, seed + 9)).save(root.parent / "val.png")
    return root


def train_config(tiny_weights: Path, photos: Path, output_dir: Path, *overrides: str) -> TrainConfig:
    """A training run on the tiny weights and ``photos``, small enough for the CPU: 64² crops, batch 2,
    no loader workers, no warm-up, a log line every step; ``overrides`` (``key=value``) come last."""
    return load_train_config(
        None,
        [
            f"output_dir={output_dir}",
            f"model.weights_dir={tiny_weights}",
            f"data.hr_dirs=['{photos}']",
            "data.crop_size=64",
            "data.num_workers=0",
            "train.batch_size=2",
            "train.cpu=true",
            "train.log_every=1",
            "optim.warmup_steps=0",
            *overrides,
        ],
    )


def fixed_batch(trainer, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """``(hr, lr)``: the first two crops of the trainer's data with their degradations, both fixed by
    ``seed``; float32 in [0, 1] on the trainer's device, ``hr`` ``[2, 3, 64, 64]`` and ``lr``
    ``[2, 3, 16, 16]`` with :func:`train_config`'s crops."""
    c = trainer.config
    dataset = CropDataset(find_training_images(c.data), c.data, seed)
    batch = {k: torch.stack([dataset[n][k] for n in range(2)]) for k in ("hr", "lr", "paired")}
    return degrade_batch(batch, c.degradation, generator_for(seed, "degrade"), trainer.device)


TWO_RANK_SCRIPT = """
import sys, torch
from pathlib import Path
from cassr_cli.training.config import load_train_config
from cassr_cli.training.loop import Trainer
config = load_train_config(Path(sys.argv[1]))
trainer = Trainer(config)
trainer.run()
rank = trainer.accelerator.process_index
assert trainer.accelerator.num_processes == 2
torch.save({k: v.cpu() for k, v in trainer.trainable.state_dict().items()}, Path(config.output_dir) / f"rank{rank}.pt")
trainer.close()
"""


def train_bf16_with_checkpointing(config: TrainConfig, scratch: Path) -> tuple[str, list[dict[str, Any]]]:
    """``python -m cassr_cli train`` (what ``accelerate launch -m cassr_cli train`` starts) on ``config`` with
    ``--set train.mixed_precision=bf16 --set train.gradient_checkpointing=true``, in a fresh process so
    accelerate's process-wide state can take bf16. Returns its stdout (the saved file's path) and the
    records of ``OUTPUT_DIR/train_log.jsonl``."""
    config_file = scratch / "bf16.toml"
    config_file.write_text(to_toml(config))
    overrides = ["--set", "train.mixed_precision=bf16", "--set", "train.gradient_checkpointing=true"]
    done = subprocess.run(
        [sys.executable, "-m", "cassr_cli", "train", str(config_file), *overrides, "-q"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = (Path(config.output_dir) / "train_log.jsonl").read_text().splitlines()
    return done.stdout.strip(), [json.loads(line) for line in log]


def train_on_two_ranks(config: TrainConfig, scratch: Path) -> list[dict[str, torch.Tensor]]:
    """Run ``config`` under torchrun on two CPU processes (gloo); each rank's trained module at the end
    (the adapter or the tuner), read back from ``OUTPUT_DIR/rank{0,1}.pt``."""
    (scratch / "ddp.toml").write_text(to_toml(config))
    (scratch / "ddp.py").write_text(TWO_RANK_SCRIPT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(scratch / "ddp.py"), str(scratch / "ddp.toml")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(Path(config.output_dir) / f"rank{r}.pt", weights_only=True) for r in range(2)]
