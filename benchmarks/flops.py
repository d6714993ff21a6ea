"""FLOP counting and the device peak table.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and the fused
attention kernels; element-wise work is not counted, which is the convention of every published TFLOP
figure). Two additions:

* the CPU flash-attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) is not in torch's
  registry, so attention on the CPU would count as zero; :data:`EXTRA_FORMULAS` counts it with torch's own
  SDPA formula (``4·B·H·Lq·Lk·d``), so CPU and GPU counts agree;
* :func:`device_peak` knows the dense fp16/bf16 tensor-core peak of common cards, for "fraction of peak".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _sdpa_formula(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """torch's SDPA forward formula, for kernels torch's registry does not list."""
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    aten = torch.ops.aten
    out: dict[Any, Callable[..., int]] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(aten, name, None)
        if op is not None:
            out[op] = _sdpa_formula
    return out


EXTRA_FORMULAS = _extra_formulas()
"""Formulas added to torch's registry for every count (see the module docstring)."""


class _DecomposingCounter(FlopCounterMode):
    """Under ``torch.inference_mode``, torch 2.5 (the floor) hands the counter composite ops (``aten.linear``,
    ``aten.conv2d``, SDPA) whole; its registry has no formula for them, so they counted zero. This splits them
    into the ops the registry knows, as newer torch does itself (there ``FlopCounterMode`` is no dispatch
    mode, so this method is never called)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func._overloadpacket not in self.flop_registry:
            TorchDispatchMode.__enter__(self)  # back on the stack for the parts (not FlopCounterMode's reset)
            try:
                out = func.decompose(*args, **(kwargs or {}))
            finally:
                TorchDispatchMode.__exit__(self, None, None, None)
            if out is not NotImplemented:
                return out
        return super().__torch_dispatch__(func, types, args, kwargs)


def flop_counter() -> FlopCounterMode:
    """A silent :class:`FlopCounterMode` that also counts the CPU attention kernels."""
    return _DecomposingCounter(display=False, custom_mapping=dict(EXTRA_FORMULAS))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (it runs for real)."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class DevicePeak:
    """Dense (no sparsity) fp16/bf16 tensor-core peak of a device, in TFLOP/s, and where it comes from."""

    name: str
    tflops: float | None
    source: str


# Vendor datasheet numbers, dense (the "with sparsity" figures are twice these). Matched as substrings of
# ``torch.cuda.get_device_name`` in order, so the more specific names come first.
PEAK_TABLE: tuple[tuple[str, float, str], ...] = (
    ("H200", 989.4, "NVIDIA H200 datasheet: 1,979 TFLOP/s bf16/fp16 with sparsity, 989 dense (SXM)"),
    ("GH200", 989.4, "NVIDIA GH200 datasheet: 989 TFLOP/s dense bf16/fp16"),
    ("H100 PCIe", 756.5, "NVIDIA H100 datasheet, PCIe: 1,513 with sparsity, 756 dense"),
    ("H100 NVL", 835.5, "NVIDIA H100 NVL datasheet: 1,671 with sparsity, 835 dense"),
    ("H100", 989.4, "NVIDIA H100 datasheet, SXM: 1,979 with sparsity, 989 dense"),
    ("H800", 989.4, "NVIDIA H800 SXM: as H100 SXM, 989 dense"),
    ("B200", 2250.0, "NVIDIA B200 datasheet: 2.25 PFLOP/s dense bf16/fp16"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16/fp16"),
    ("A800", 312.0, "NVIDIA A800: as A100, 312 dense"),
    ("L40S", 362.05, "NVIDIA L40S datasheet: 362 TFLOP/s dense bf16/fp16 (fp32 accumulate)"),
    ("L40", 181.0, "NVIDIA L40 datasheet: 181 TFLOP/s dense fp16 (fp32 accumulate)"),
    ("L4", 121.0, "NVIDIA L4 datasheet: 121 TFLOP/s dense fp16"),
    ("A10G", 70.0, "AWS A10G: 70 TFLOP/s dense fp16 (fp32 accumulate)"),
    ("A10", 125.0, "NVIDIA A10 datasheet: 125 TFLOP/s dense fp16"),
    ("RTX 4090", 165.2, "Ada whitepaper: RTX 4090 165 TFLOP/s dense fp16 with fp32 accumulate"),
    ("RTX 3090", 71.0, "Ampere whitepaper: RTX 3090 71 TFLOP/s dense fp16 with fp32 accumulate"),
    ("V100", 125.0, "NVIDIA V100 SXM2 datasheet: 125 TFLOP/s fp16 tensor"),
    ("T4", 65.0, "NVIDIA T4 datasheet: 65 TFLOP/s fp16 tensor"),
)


def device_peak(device: torch.device) -> DevicePeak:
    """The dense fp16/bf16 peak of ``device`` (None for CPUs and unknown cards: no fraction is reported)."""
    if device.type != "cuda":
        return DevicePeak(name=cpu_name(), tflops=None, source="no peak table entry for CPUs")
    name = torch.cuda.get_device_name(device)
    for key, tflops, source in PEAK_TABLE:
        if key in name:
            return DevicePeak(name=name, tflops=tflops, source=source)
    return DevicePeak(name=name, tflops=None, source="card not in benchmarks/flops.py PEAK_TABLE")


def cpu_name() -> str:
    """The CPU model name (Linux), with the thread count torch uses."""
    name = "CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} torch threads)"
