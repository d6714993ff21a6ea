"""Shared helpers for the `cassr eval` tests (imported by the test modules of tests/evaluation)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from typer.testing import CliRunner, Result

from cassr_cli.cli.app import app
from cassr_cli.testing.tiny_weights import write_identity_activation as write_identity_model  # noqa: F401 (re-exported)

TRACEBACK = "Traceback (most recent call last)"
BUILT_IN_METRICS = "psnr_y,ssim_y,psnr_rgb,niqe"


def cassr(args: Sequence[str | Path], *, env: dict[str, str] | None = None) -> Result:
    """Run ``cassr ARGS`` in-process through the real error boundary (exit-code mapping included)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def describe(result: Result) -> str:
    return f"exit {result.exit_code}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image with some structure (uint8 ``[h, w, 3]``)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)
    noise = rng.normal(0, 12, (h, w, 3))
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def bicubic_lr(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    from cassr_cli.evaluation.imresize import imresize

    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    return imresize(hr[: h * scale, : w * scale], h, w, quantize=True).astype(np.uint8)


def make_pairs(folder: Path, sizes: Sequence[tuple[int, int]], *, scale: int = 4, layout: str = "suffix") -> Path:
    """HR/LR pairs (LR = MATLAB bicubic of HR) in ``folder``: ``suffix`` = X_HR.png/X_LR.png in one folder,
    ``folders`` = HR/X.png and LR/X.png."""
    for i, (h, w) in enumerate(sizes):
        hr = textured(h, w, seed=i)
        lr = bicubic_lr(hr, scale)
        if layout == "suffix":
            save(folder / f"im{i}_HR.png", hr)
            save(folder / f"im{i}_LR.png", lr)
        else:
            save(folder / "HR" / f"im{i}.png", hr)
            save(folder / "LR" / f"im{i}.png", lr)
    return folder
