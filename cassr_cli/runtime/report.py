"""Facts about this machine for ``cassr doctor``: versions, devices, precisions, attention kernels."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from typing import Any


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_report() -> dict[str, Any]:
    """A JSON-serialisable description of the software and hardware cassr would run on."""
    import torch

    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            name: _version(name)
            for name in (
                "cassr", "torch", "torchvision", "diffusers", "transformers", "huggingface_hub",
                "safetensors", "spandrel", "xformers", "accelerate", "pillow", "opencv-python-headless",
                "numpy", "tifffile",
            )
        },
        "cuda": {
            "available": torch.cuda.is_available(),
            "torch_cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "devices": [],
        },
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            report["cuda"]["devices"].append(
                {
                    "index": index,
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_total_gib": round(total / 2**30, 2),
                    "memory_free_gib": round(free / 2**30, 2),
                    "bf16": bool(torch.cuda.is_bf16_supported()),
                    "fp16": True,
                }
            )
    report["attention"] = {
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "sdpa_flash_enabled": bool(torch.backends.cuda.flash_sdp_enabled()),
        "sdpa_mem_efficient_enabled": bool(torch.backends.cuda.mem_efficient_sdp_enabled()),
        "xformers_installed": importlib.util.find_spec("xformers") is not None,
    }
    report["cpu_dtypes"] = ["fp32", "bf16"]
    return report
