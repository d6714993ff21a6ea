"""Before/after micro-benchmarks of the engine fixes made from what the benchmarks exposed, in one run.

    python -m benchmarks.micro [--size 2048] [--threads 1]

Each fix keeps its previous implementation here (``*_before``) so the two can be timed in the same process
on the same data, and so the smoke test can check that they agree.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def wavelet_blur_before(image: torch.Tensor, radius: int) -> torch.Tensor:
    """The colour fix's blur before the fix: a dilated depthwise ``conv2d`` (PyTorch's slow CPU path)."""
    channels = image.shape[1]
    kernel = _BINOMIAL.to(image.device, image.dtype).expand(channels, 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def wavelet_color_fix_with(blur: Callable[[torch.Tensor, int], torch.Tensor], output: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """``cassr_cli.engine.colorfix.wavelet_color_fix`` with a given blur."""

    def low(x: torch.Tensor) -> torch.Tensor:
        for level in range(levels):
            x = blur(x, 2**level)
        return x

    return (output - low(output) + low(reference)).clamp_(0.0, 1.0)


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_host_delta(fn: Callable[[], Any]) -> int:
    """Peak RSS growth while ``fn`` runs (Linux; 0 elsewhere)."""
    import gc

    from benchmarks.instrument import (
        host_peak_bytes,
        host_rss_bytes,
        release_free_host_memory,
        reset_host_peak,
    )

    gc.collect()
    release_free_host_memory()
    if not reset_host_peak():
        return 0
    base = host_rss_bytes()
    fn()
    return host_peak_bytes() - base


def run(size: int = 2048, repeats: int = 2) -> dict[str, Any]:
    """Time each fix before and after on a ``size²`` image; also report the largest difference and the
    peak host memory each needs."""
    from cassr_cli.engine.colorfix import wavelet_blur, wavelet_color_fix

    g = torch.Generator().manual_seed(0)
    out = torch.rand((1, 3, size, size), generator=g)
    ref = torch.rand((1, 3, size, size), generator=g)
    mem_before = _peak_host_delta(lambda: wavelet_color_fix_with(wavelet_blur_before, out, ref))
    mem_after = _peak_host_delta(lambda: wavelet_color_fix(out, ref))
    before = _best_of(lambda: wavelet_color_fix_with(wavelet_blur_before, out, ref), repeats)
    after = _best_of(lambda: wavelet_color_fix(out, ref), repeats)
    diff = (wavelet_color_fix_with(wavelet_blur_before, out, ref) - wavelet_color_fix(out, ref)).abs().max().item()
    blur_diff = max((wavelet_blur_before(out, r) - wavelet_blur(out, r)).abs().max().item() for r in (1, 4, 16))
    return {
        "wavelet_color_fix": {
            "size": size,
            "threads": torch.get_num_threads(),
            "before_seconds": before,
            "after_seconds": after,
            "speedup": before / after,
            "before_peak_host_delta_bytes": mem_before,
            "after_peak_host_delta_bytes": mem_after,
            "image_bytes": out.numel() * out.element_size(),
            "max_abs_difference": diff,
            "blur_max_abs_difference": blur_diff,
        }
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        print(json.dumps(run(args.size, args.repeats), indent=1))


if __name__ == "__main__":
    main()
