"""Working memory of one tile per model call, measured, next to the estimates auto tile batches use.

    python -m benchmarks.tile_memory [--dtype fp32|bf16] [--threads 1]

On the CPU (real-size random-weight models: the SD 2.1-base UNet and VAE, RealESRGAN_x4plus through
spandrel), each model runs at its default tile with a batch of 1 and of 2; the peak resident memory above
the baseline (``VmHWM`` reset through ``/proc/self/clear_refs``, freed heap trimmed first) is its working
memory. The difference between the two batches is one more tile's share. The estimates are
``cassr_cli/engine/batch_size.py``'s, in the same dtype. CPU kernels are not CUDA's, so this is a check on
the order of magnitude; ``gpu_check.sh`` reports each stage's device peak next to its batch.

The UNet runs with diffusers' stock attention (no guidance streams): cassr's per-step guidance adds the K/V
of two more streams to every attn1 layer, a few tens of MB per row at a 64² latent.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.instrument import host_peak_bytes, host_rss_bytes, release_free_host_memory, reset_host_peak

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIB = 2**20


def peak_above_baseline(run: Callable[[], Any]) -> int:
    """Peak resident bytes above the resident bytes just before ``run()`` (its outputs freed)."""
    release_free_host_memory()
    base = host_rss_bytes()
    if not reset_host_peak():
        raise SystemExit("this needs Linux's /proc/self/clear_refs to reset the peak")
    with torch.inference_mode():
        out = run()
    peak = host_peak_bytes()
    del out
    return max(0, peak - base)


def measure(dtype: torch.dtype) -> list[dict[str, Any]]:
    """One row per model (each built, measured and dropped in turn, so only one lives at a time)."""
    return [*_unet_rows(dtype), *_vae_rows(dtype), *_activation_rows(dtype)]


def _unet_rows(dtype: torch.dtype) -> list[dict[str, Any]]:
    from cassr_cli.engine.batch_size import unet_tile_bytes
    from cassr_cli.testing.architectures import sd21_base_unet

    unet = sd21_base_unet(dtype=dtype).eval()
    emb = torch.zeros(1, 77, int(unet.config.cross_attention_dim), dtype=dtype)
    t = torch.tensor(500)

    def call(n: int) -> Callable[[], Any]:
        return lambda: unet(torch.randn(n, 4, 64, 64, dtype=dtype), t, encoder_hidden_states=emb.expand(n, -1, -1)).sample

    return [_row("UNet row, 64² latent (512 px)", call, unet_tile_bytes(64 * 64, 1, dtype))]


def _vae_rows(dtype: torch.dtype) -> list[dict[str, Any]]:
    from cassr_cli.engine.batch_size import vae_tile_bytes
    from cassr_cli.testing.architectures import sd21_base_vae

    vae = sd21_base_vae(dtype=dtype).eval()

    def encode(n: int) -> Callable[[], Any]:
        return lambda: vae.encode(torch.rand(n, 3, 512, 512, dtype=dtype)).latent_dist.mean

    def decode(n: int) -> Callable[[], Any]:
        return lambda: vae.decode(torch.randn(n, 4, 64, 64, dtype=dtype)).sample

    estimate = vae_tile_bytes(512 * 512, dtype)
    return [_row("VAE encode, 512² tile", encode, estimate), _row("VAE decode, 512² tile", decode, estimate)]


def _activation_rows(dtype: torch.dtype) -> list[dict[str, Any]]:
    from spandrel import ModelLoader

    from cassr_cli.engine.batch_size import activation_tile_bytes
    from cassr_cli.testing.architectures import realesrgan_x4plus_state_dict

    model = ModelLoader(device="cpu").load_from_state_dict(realesrgan_x4plus_state_dict()).model.to(dtype).eval()

    def call(n: int) -> Callable[[], Any]:
        return lambda: model(torch.rand(n, 3, 192, 192, dtype=dtype))

    return [_row("RealESRGAN_x4plus, 192² tile (768² out)", call, activation_tile_bytes(768 * 768, dtype))]


def _row(name: str, call: Callable[[int], Callable[[], Any]], estimate: int) -> dict[str, Any]:
    call(1)()  # warm-up: lazy initialisation and the allocator's first blocks are not working memory
    one, two = peak_above_baseline(call(1)), peak_above_baseline(call(2))
    row = {"tile": name, "batch_1_mib": one / MIB, "batch_2_mib": two / MIB, "per_extra_tile_mib": (two - one) / MIB,
           "estimate_mib": estimate / MIB}  # fmt: skip
    row["estimate_over_measured"] = estimate / max(one, two - one, 1)
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tile_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(DTYPES[args.dtype])
    print("\n| tile | batch 1, MiB | batch 2, MiB | one more tile, MiB | estimate, MiB | estimate / measured |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tile']} | {r['batch_1_mib']:.0f} | {r['batch_2_mib']:.0f} | {r['per_extra_tile_mib']:.0f} | "
            f"{r['estimate_mib']:.0f} | {r['estimate_over_measured']:.1f}× |"
        )
    return rows


if __name__ == "__main__":
    main()
