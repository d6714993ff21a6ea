"""Shared helpers for the `cassr upscale` command tests (imported by the test modules of tests/cli).

Fixture images are generated here, in each test's tmp_path. The default stage-1 model of these tests is
an *identity-like* ×4 network: a spandrel "Compact" (SRVGGNetCompact, the realesr-animevideov3
architecture) whose last convolution is zero, so it returns exactly the nearest-neighbour ×4 upsample of
its input. It is loaded by the real command through spandrel like any user model, and it makes colour
assertions (halos, 16-bit values, grey) meaningful, which a random network would not.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from typer.testing import CliRunner, Result

from cassr_cli.cli.app import app
from cassr_cli.testing.tiny_weights import write_identity_activation as write_identity_model  # noqa: F401 (re-exported)

TRACEBACK = "Traceback (most recent call last)"


# --- the command ------------------------------------------------------------------------------------------


def cassr(args: Sequence[str | Path], *, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``cassr ARGS`` in-process through the real error boundary (exit-code mapping included)."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input, env=env)


def stdout_lines(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line]


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def describe(result: Result) -> str:
    """For assertion messages."""
    return f"exit {result.exit_code}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


# --- models -----------------------------------------------------------------------------------------------


# --- fixture images -------------------------------------------------------------------------------------


def rgb8(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_rgb(path: Path, h: int = 12, w: int = 16, seed: int = 0, **save: Any) -> Path:
    """A small random RGB image in the format its extension names (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[
        path.suffix.lower()
    ]
    Image.fromarray(rgb8(h, w, seed)).save(path, fmt, **save)
    return path


def write_photos(src: Path, count: int, *, h: int, w: int, name: str = "img{i}.png") -> Path:
    """``count`` random RGB images ``name.format(i=i)`` (seed ``i``) in ``src``; returns ``src``."""
    for i in range(count):
        save_rgb(src / name.format(i=i), h=h, w=w, seed=i)
    return src


def png16_ihdr(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    data = path.read_bytes()[:33]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color_type


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG whose header claims ``width × height`` pixels (its data is a few bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


def decodes_completely(path: Path) -> bool:
    """True when Pillow decodes every pixel of ``path`` (a partial file fails here)."""
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:
        return False


def encoded(fmt: str, arr: np.ndarray, **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, fmt, **save)
    return buffer.getvalue()


def partial_files(root: Path) -> list[Path]:
    """What an unfinished write or a live claim leaves: temporaries and claim files (none after a run)."""
    return sorted(p for p in root.rglob("*") if p.name.endswith((".cassr-partial", ".cassr-claim")))


def file_bytes(folder: Path) -> dict[str, bytes]:
    """``{name: bytes}`` of the files directly in ``folder``."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def single_run_outputs(src: Path, dest: Path, model: Path, *, exit_code: int = 0) -> dict[str, bytes]:
    """The outputs (:func:`file_bytes`) of one plain ``cassr upscale SRC DEST --activation MODEL --steps 0``
    run, which concurrent and distributed runs must reproduce; its exit code must be ``exit_code``."""
    result = cassr(["upscale", src, dest, "--activation", model, "--steps", "0", "-q"])
    assert result.exit_code == exit_code, describe(result)
    return file_bytes(dest)
