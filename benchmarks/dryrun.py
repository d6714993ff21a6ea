"""Dry run: the real engine at any size with PyTorch's ``meta`` device standing in for the GPU.

Every model is built on the meta device and the engine runs with ``meta`` as its compute device, so it takes
the *device path* (``cassr_cli/engine/canvas.py``): canvases, blending, the scheduler, the colour fix and the
resize are meta tensors too. A meta op computes shapes only, so what a dry run spends is what the host would
spend driving a GPU — Python, plan building, PyTorch's dispatcher — with nothing of the device's own work:

* exact model call and row counts and the exact FLOPs per stage
  (:class:`~benchmarks.instrument.ModelMeter` counts them on the meta tensors);
* the host work outside model calls — wall time, and CPU time (which other processes on a busy machine do
  not inflate) — and in a second, untimed run the number of device operations launched outside model calls
  (:class:`OpCounter`): each is a kernel launch on a GPU, a few microseconds of host time that the
  dispatcher cost on meta does not include;
* the time those device operations took on ``meta``: its shape functions (many written in Python) cost the
  host 50–450 µs per operation, far more than a CUDA launch (a few µs), so the CPU time outside model calls
  less this time is the host work that is not the device operations themselves — what the launches add
  to it on a GPU is their count times the launch cost;
* host memory: on the device path only the input and the result live there.

diffusers' x4 upscaler runs the same way (its execution device is ``meta``), so its host work is measured
on the same terms. One change is needed for that: its DDIM scheduler indexes a host tensor with the
device timestep (``alphas_cumprod[t]``, a synchronisation on a GPU, impossible on meta), so its timesteps
are kept on the host (:func:`host_timesteps`), which is what that line costs on a GPU anyway.

Model time in a dry run means nothing (meta execution) and is reported as such.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

META = torch.device("meta")


_METADATA_OPS = frozenset({"_has_compatible_shallow_copy_type", "detach", "alias", "lift_fresh", "_to_copy_noop"})


class OpCounter(TorchDispatchMode):
    """Counts ATen operations by the device of their tensors, outside model calls (``inside()`` says when a
    model call is running; its operations are the model's, not the host's). *Launches* are the operations
    that would start a kernel on a GPU: views (slices, reshapes …) and metadata checks are counted apart."""

    def __init__(self, inside: Callable[[], bool]) -> None:
        super().__init__()
        self.inside = inside
        self.device_ops: Counter[str] = Counter()
        self.device_views: Counter[str] = Counter()
        self.host_ops: Counter[str] = Counter()
        self.device_op_seconds = 0.0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        took = time.perf_counter() - start
        if not self.inside():
            devices = {t.device.type for t in _tensors((args, kwargs, out))}
            name = str(func.overloadpacket.__name__)
            if devices & {"meta", "cuda"}:
                self.device_op_seconds += took
                copies = name == "to" and args and out is not args[0]  # a cast or a move, not a view
                viewish = (func.is_view and not copies) or name in _METADATA_OPS
                (self.device_views if viewish else self.device_ops)[name] += 1
            elif devices:
                self.host_ops[name] += 1
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "device_ops": sum(self.device_ops.values()),
            "device_views": sum(self.device_views.values()),
            "host_tensor_ops": sum(self.host_ops.values()),
            "device_op_seconds": self.device_op_seconds,
            "top_device_ops": dict(self.device_ops.most_common(12)),
        }


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


@contextlib.contextmanager
def host_timesteps(scheduler: Any) -> Iterator[None]:
    """Keep a diffusers scheduler's timesteps on the host inside the block (see the module docstring)."""
    original = scheduler.set_timesteps

    def on_host(*args: Any, device: Any = None, **kwargs: Any) -> Any:
        return original(*args, device="cpu", **kwargs)

    scheduler.set_timesteps = on_host
    try:
        yield
    finally:
        del scheduler.set_timesteps
