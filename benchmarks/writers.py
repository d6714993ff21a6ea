"""``--steps 0`` throughput against the number of writer threads: how many images per second the runner
turns out when the model costs nothing (what a GPU batch of stage 1 approaches), so that PNG encoding and
writing are what is left.

    python -m benchmarks.writers --images 12 --size 512 --writers 1,2,4
    python -m benchmarks.writers --pipeline realesrgan --device cuda --writers 1,2,4,8   # on a GPU

A batch of ``--images`` synthetic ``--size``² PNG inputs goes through the real runner (reading, output
planning, the writer pool, PNG encoding at cassr's level, atomic writes). ``--pipeline instant`` (default)
stands in a pipeline that returns a precomputed ×4 image at once (a deterministic synthetic photo, so the
PNG encoder does the work it does on a real one): the ceiling the writers allow. ``--pipeline realesrgan``
runs the real stage 1 (RealESRGAN_x4plus architecture, random weights) on ``--device``: what a ``--steps 0``
batch does there. Each writer count runs on the same inputs; the output bytes are checked equal across
counts. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.run import synthetic_photo


class InstantPipeline:
    """Stands in for ``CassrPipeline`` with ``--steps 0``: a fixed output, no compute."""

    def __init__(self, output: torch.Tensor) -> None:
        self.output = output
        self.activation = SimpleNamespace(scale=4)
        self.diffusion = None

    def __call__(self, image: torch.Tensor, *, out_size: tuple[int, int], **_: Any) -> Any:
        assert tuple(self.output.shape[-2:]) == tuple(out_size)
        return SimpleNamespace(image=self.output, stats={})


def realesrgan_pipeline(device: torch.device) -> Any:
    """Stage 1 alone on ``device`` (fp16 on CUDA), the RealESRGAN_x4plus architecture with random weights."""
    from benchmarks.components import _activation_descriptor
    from cassr_cli.engine.activation import ActivationStage, choose_dtype
    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.runtime.device import Runtime

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    descriptor = _activation_descriptor("real", 0)
    act_dtype = choose_dtype(dtype, supports_half=descriptor.supports_half, supports_bf16=descriptor.supports_bfloat16, device=device)
    descriptor.to(device=device, dtype=act_dtype).eval()
    runtime = Runtime(device, dtype)
    stage = ActivationStage(descriptor, scale=4, runtime=runtime, dtype=act_dtype, tile_size=256, tile_overlap=32, tile_batch=4)
    return CassrPipeline(stage)


def run(images: int, size: int, writers: list[int], repeats: int, pipeline: str = "instant", device: str = "cpu") -> dict[str, Any]:
    from PIL import Image

    from cassr_cli.config import UpscaleConfig
    from cassr_cli.runner import upscale_files

    output = synthetic_photo(size * 4, size * 4, seed=7)
    model = InstantPipeline(output) if pipeline == "instant" else realesrgan_pipeline(torch.device(device))
    results: dict[str, Any] = {
        "pipeline": pipeline, "device": device, "images": images, "input": size, "output": size * 4,
        "cpu_count": os.cpu_count(), "runs": [],
    }
    digests: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(images):
            pixels = (synthetic_photo(size, size, seed=i)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
            Image.fromarray(pixels).save(src / f"img{i:03d}.png")
        for count in writers:
            best = None
            for r in range(repeats):
                dest = Path(tmp) / f"out-{count}-{r}"
                config = UpscaleConfig(steps=0, writers=count)
                start = time.perf_counter()
                summary = upscale_files([str(src)], dest, config, pipeline_factory=lambda _c: model)
                seconds = time.perf_counter() - start
                assert summary.count("ok") == images, [x.error for x in summary.results]
                digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(dest.iterdir()))).hexdigest()
                digests.setdefault(count, digest)
                best = seconds if best is None else min(best, seconds)
            results["runs"].append({"writers": count, "seconds": best, "images_per_second": images / best})
    results["same_bytes_for_every_writer_count"] = len(set(digests.values())) == 1
    base = results["runs"][0]["images_per_second"]
    for row in results["runs"]:
        row["speedup"] = row["images_per_second"] / base
    results["load_average"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=512, help="input edge in pixels (outputs are ×4)")
    parser.add_argument("--writers", default="1,2,4", help="comma-separated writer counts")
    parser.add_argument("--repeats", type=int, default=1, help="runs per count (the best is kept)")
    parser.add_argument("--pipeline", choices=["instant", "realesrgan"], default="instant")
    parser.add_argument("--device", default="cpu", help="for --pipeline realesrgan")
    args = parser.parse_args()
    counts = [int(x) for x in args.writers.split(",")]
    print(json.dumps(run(args.images, args.size, counts, args.repeats, args.pipeline, args.device), indent=1))


if __name__ == "__main__":
    main()
