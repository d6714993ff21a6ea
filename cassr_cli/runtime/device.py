"""Device and precision: chosen once per run, passed down explicitly.

``auto`` means CUDA (device 0) when available, else the CPU. Precision ``auto`` means fp16 on CUDA and
fp32 elsewhere (half precision convolutions are not implemented or are very slow on CPUs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from cassr_cli.errors import DeviceUnavailableError

logger = logging.getLogger(__name__)

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision models run.

    Attributes:
        device: the compute device.
        dtype: the compute dtype of the models (activations and weights).
        free_memory: device memory (bytes) to size work by instead of asking the device, or None to ask
            (:func:`free_memory_bytes`). A dry run, whose ``meta`` device stands for a GPU, sets it.
    """

    device: torch.device
    dtype: torch.dtype
    free_memory: int | None = None


def select_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Resolve ``device`` (auto|cpu|cuda|cuda:N|mps) and ``dtype`` (auto|fp16|bf16|fp32).

    Raises:
        DeviceUnavailableError: the device does not exist here, or it cannot run the dtype.
    """
    if device == "auto":
        dev = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceUnavailableError(
                    f"device {device!r} requested but CUDA is not available",
                    hint="check `cassr doctor`, or use --device cpu (slow)",
                )
            index = dev.index or 0
            if index >= torch.cuda.device_count():
                raise DeviceUnavailableError(
                    f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
                )
            dev = torch.device("cuda", index)
        elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceUnavailableError(f"device {device!r} requested but MPS is not available")
    if dtype == "auto":
        dt = torch.float16 if dev.type == "cuda" else torch.float32
    else:
        dt = _DTYPES[dtype]
    if dt is torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceUnavailableError(
            f"bf16 is not supported on {torch.cuda.get_device_name(dev)}", hint="use --dtype fp16"
        )
    if dt is torch.float16 and dev.type == "cpu":
        raise DeviceUnavailableError(
            "fp16 is not supported on the CPU", hint="use --dtype fp32 (the CPU default) or bf16"
        )
    return Runtime(dev, dt)


def enable_tf32(runtime: Runtime) -> bool:
    """Let fp32 matrix multiplies and convolutions use TF32 tensor cores (CUDA only; Ampere and newer):
    about 8× the fp32 throughput for a 10-bit mantissa in the products, which the fp32 path does not need
    more precisely (fp16/bf16 are the defaults anyway). PyTorch's switches are process-wide; they are set
    once per run for an fp32 CUDA runtime. Returns whether they were set."""
    if runtime.device.type != "cuda" or runtime.dtype is not torch.float32:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def is_out_of_memory(err: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, MPS or the generic allocator message)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "MPS backend out of memory" in text)


_DEVICE_FAILURE_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error", "an illegal memory access")


def is_device_failure(err: BaseException) -> bool:
    """True for a GPU error other than out-of-memory (illegal access, device-side assert, driver error):
    after one of these the CUDA context is unusable, so retrying or moving to the next image is futile."""
    if is_out_of_memory(err):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(err, accelerator_error):
        return True
    return isinstance(err, RuntimeError) and any(marker in str(err) for marker in _DEVICE_FAILURE_MARKERS)


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the driver after an OOM so a smaller retry can succeed."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def free_memory_bytes(runtime: Runtime) -> int | None:
    """Device memory free for new work now: ``runtime.free_memory`` when set; on CUDA the driver's free
    memory plus the blocks PyTorch's caching allocator holds unused; None elsewhere (no such figure)."""
    if runtime.free_memory is not None:
        return runtime.free_memory
    if runtime.device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(runtime.device)
    unused = torch.cuda.memory_reserved(runtime.device) - torch.cuda.memory_allocated(runtime.device)
    return int(free + max(unused, 0))


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on ``device`` (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory since the last :func:`reset_peak_memory` (0 off CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return 0


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (for honest stage timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
