"""Fault injection for scale-out tests: a pipeline factory whose pipeline kills its own process on the
N-th upscale of a run (as the out-of-memory killer would, with SIGKILL), and which logs every upscale it
finishes, so a test can check that a retried image was computed exactly once in total.

The factory is picklable (Ray ships it to its actors) and counts across processes through files in
``log_dir``: ``calls`` gets one byte per upscale started, ``finished`` one line (a digest of the input
pixels) per upscale finished, and ``crashed`` marks that the crash happened (once per ``log_dir``).
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path
from typing import Any

from cassr_cli.config import UpscaleConfig


class CrashingPipelineFactory:
    """Builds the real pipeline for ``config``, wrapped to crash on upscale number ``crash_on``."""

    def __init__(self, log_dir: Path | str, crash_on: int = 3) -> None:
        self.log_dir = str(log_dir)
        self.crash_on = crash_on

    def __call__(self, config: UpscaleConfig) -> Any:
        from cassr_cli.engine.pipeline import CassrPipeline

        return _CrashingPipeline(CassrPipeline.from_config(config), Path(self.log_dir), self.crash_on)


class _CrashingPipeline:
    def __init__(self, pipeline: Any, log_dir: Path, crash_on: int) -> None:
        self.pipeline = pipeline
        self.activation = pipeline.activation
        self.diffusion = pipeline.diffusion
        self.log_dir = log_dir
        self.crash_on = crash_on

    def __call__(self, image: Any, **kwargs: Any) -> Any:
        if _append(self.log_dir / "calls", b"x") == self.crash_on and _mark(self.log_dir / "crashed"):
            os.kill(os.getpid(), signal.SIGKILL)
        result = self.pipeline(image, **kwargs)
        digest = hashlib.sha256(image.numpy().tobytes()).hexdigest()[:16]
        _append(self.log_dir / "finished", f"{digest}\n".encode())
        return result

    def close(self) -> None:
        self.pipeline.close()


def finished_digests(log_dir: Path) -> list[str]:
    """One digest per upscale that finished, in order."""
    path = Path(log_dir) / "finished"
    return path.read_text().split() if path.exists() else []


def input_digest(rgb: Any) -> str:
    """The digest the wrapper logs for an input given as the ``[H, W, 3]`` float32 array a reader
    returns (the pipeline sees it as ``[1, 3, H, W]``)."""
    import numpy as np

    chw = np.ascontiguousarray(np.transpose(rgb, (2, 0, 1))[None])
    return hashlib.sha256(chw.tobytes()).hexdigest()[:16]


def _append(path: Path, data: bytes) -> int:
    """Append ``data`` atomically; returns how many records of that size the file holds up to and
    including this one (the offset after an O_APPEND write is exact even with concurrent writers)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        return os.lseek(fd, 0, os.SEEK_CUR) // len(data)
    finally:
        os.close(fd)


def _mark(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True
