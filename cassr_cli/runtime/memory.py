"""Host memory: how much one image needs and how much there is. Torch-free.

The whole image and the output canvas live on the host (DESIGN §3), so a huge output can exhaust host
RAM long before the GPU notices. :func:`check_host_memory` refuses such an image up front with a clear
message instead of letting the operating system kill the process half-way through a batch.
"""

from __future__ import annotations

import os

from cassr_cli.errors import ImageTooLargeError

# Bytes of host memory per output pixel, by stage, measured by reading the buffers the engine keeps
# alive at its peak: float32 RGB canvases (12 B/px each) for the activation output, the bicubic LR
# upsample, the decoded diffusion output and the colour-fix temporaries, plus the encoder's integer
# copy and the encoded file.
BYTES_PER_OUTPUT_PIXEL_STAGE1 = 48
BYTES_PER_OUTPUT_PIXEL_DIFFUSION = 112
BYTES_PER_NATIVE_PIXEL = 12  # the activation model's native-scale canvas before resizing


def estimate_host_bytes(
    out_height: int, out_width: int, *, native_pixels: int, diffusion: bool
) -> int:
    """Peak host bytes to upscale one image to ``out_height × out_width``.

    Args:
        native_pixels: pixels of the activation model's output at its native scale (input × scale²).
        diffusion: whether stage 2 runs (it keeps more full-size buffers).
    """
    per_px = BYTES_PER_OUTPUT_PIXEL_DIFFUSION if diffusion else BYTES_PER_OUTPUT_PIXEL_STAGE1
    return out_height * out_width * per_px + native_pixels * BYTES_PER_NATIVE_PIXEL


def available_host_bytes() -> int | None:
    """Memory the OS can give us now (Linux: MemAvailable; elsewhere: free physical pages), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def host_budget_bytes(max_host_memory_gb: float) -> int | None:
    """The budget one image may use: the configured GiB, or 90% of what is available (None: unknown)."""
    if max_host_memory_gb > 0:
        return int(max_host_memory_gb * 2**30)
    available = available_host_bytes()
    return None if available is None else int(available * 0.9)


def check_host_memory(
    out_height: int, out_width: int, *, native_pixels: int, diffusion: bool, max_host_memory_gb: float
) -> None:
    """Raise :class:`ImageTooLargeError` when the output would not fit in host memory."""
    need = estimate_host_bytes(out_height, out_width, native_pixels=native_pixels, diffusion=diffusion)
    budget = host_budget_bytes(max_host_memory_gb)
    if budget is not None and need > budget:
        raise ImageTooLargeError(
            f"output {out_width}×{out_height} needs about {need / 2**30:.1f} GiB of host memory, "
            f"more than the {budget / 2**30:.1f} GiB available",
            hint="use a smaller --scale, split the image, or raise --max-host-memory-gb if you know better",
        )
