"""Training checkpoints: an inference-ready model file, a resume state and the config, in one folder.

``output_dir/checkpoint-<step>/``:

* ``adapter.safetensors`` — what ``cassr upscale --adapter`` loads (EMA weights when EMA is on), saved by
  :meth:`MultiAttentionAdapter.save` with ``mode="cached"`` and the trained ``t_g``; or, for
  ``model.kind = "scedit"``, ``scedit.safetensors`` — what ``cassr upscale --activation`` loads, saved by
  :meth:`SCEditTuner.save`;
* ``training_state.pt`` — the resume state: step, raw trained weights, optimizer, learning-rate
  scheduler, EMA, fp16 grad-scaler, and the generator scheme. Plain tensors and numbers only, read back
  with ``torch.load(weights_only=True)``;
* ``config.toml`` — the effective training config.

A checkpoint is written into a hidden temporary folder and renamed into place, so an interrupted save
never leaves a folder that ``--resume latest`` would pick up.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cassr_cli.errors import ConfigError, UsageError

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.toml"
STATE_VERSION = 1


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the complete checkpoints in ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_resume_checkpoint(output_dir: Path, resume: str) -> Path:
    """The checkpoint folder for ``--resume``: ``latest`` (newest in ``output_dir``) or a path to a
    checkpoint folder (or a file inside one).

    Raises:
        UsageError: nothing to resume from.
    """
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise UsageError(f"--resume latest: no checkpoint-*/ with a {STATE_FILE} in {output_dir}")
        return found[-1][1]
    path = Path(resume).expanduser()
    if path.is_file():
        path = path.parent
    if not (path / STATE_FILE).is_file():
        raise UsageError(f"--resume {resume}: not a training checkpoint (no {STATE_FILE} in {path})")
    return path


def write_checkpoint(
    output_dir: Path,
    step: int,
    *,
    model_file: str,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    config_toml: str,
    keep: int = 0,
) -> Path:
    """Write ``checkpoint-<step>/`` atomically and prune old ones beyond ``keep`` (0 keeps all);
    ``save_model(path)`` writes the inference-ready file ``model_file``."""
    final = checkpoint_dir(output_dir, step)
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(tmp / model_file)
    torch.save({"version": STATE_VERSION, **state}, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(config_toml, encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def read_state(folder: Path) -> dict[str, Any]:
    """The resume state of a checkpoint folder (safe loading: tensors and plain containers only)."""
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ConfigError(f"cannot read the resume state in {folder}: {err}") from err
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ConfigError(f"{folder / STATE_FILE} is not a cassr training state (version {STATE_VERSION})")
    return state
