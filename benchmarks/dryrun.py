"""FLOP dry run: the real engine at any size, with every model replaced by its meta-device twin.

Each model call's inputs are moved to PyTorch's ``meta`` device (shapes only, no data, no compute), the
real-size architecture runs there (so :class:`~benchmarks.instrument.ModelMeter` counts its FLOPs exactly),
and zeros of the output's shape come back on the CPU. Everything else — tile plans, blending, the
scheduler, noise, resizes, colour fix, canvases — is the real engine code running for real on the CPU.

So on a machine without a GPU a dry run gives, for the full-size workloads:

* the exact model call and row counts and the exact FLOPs per stage of what the GPU would run;
* the host-side time and host memory of everything outside the models at full size (an upper bound for a
  GPU host: here the latent-space blending and the scheduler also run on the CPU).

Model time in a dry run means nothing (meta execution) and is reported as such.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


def to_meta(value: Any) -> Any:
    """Tensors (also inside tuples, lists and dicts) moved to the meta device."""
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, (list, tuple)):
        return type(value)(to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    return value


def from_meta(value: Any, device: torch.device) -> Any:
    """Meta tensors replaced by zeros on ``device``, keeping diffusers/transformers output containers."""
    if isinstance(value, torch.Tensor):
        return torch.zeros(value.shape, dtype=value.dtype, device=device) if value.is_meta else value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(from_meta(v, device) for v in value)
    if isinstance(value, dict):  # diffusers BaseOutput and transformers ModelOutput are OrderedDicts
        return type(value)(**{k: from_meta(v, device) for k, v in value.items()})
    if type(value).__name__ == "DiagonalGaussianDistribution":
        return type(value)(from_meta(value.parameters, device))
    return value


def _records_guidance(kwargs: dict[str, Any]) -> bool:
    ctx = (kwargs.get("cross_attention_kwargs") or {}).get("guidance")
    return type(ctx).__name__ in ("WritePass", "JointPass")


def meta_call(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """``fn`` run on meta copies of its arguments, returning zeros on ``device``.

    The meta output of each distinct call signature is kept, so repeated calls only make zeros (the
    meter outside still counts them and their FLOPs). Guidance-recording UNet calls always run: they
    fill the K/V cache that the first cached call of each signature reads.
    """
    from benchmarks.instrument import signature

    templates: dict[Any, Any] = {}

    def shim(*args: Any, **kwargs: Any) -> Any:
        key = signature((args, kwargs))
        if key not in templates or _records_guidance(kwargs):
            templates[key] = fn(*to_meta(args), **to_meta(kwargs))
        return from_meta(templates[key], device)

    return shim


@contextlib.contextmanager
def meta_methods(owners: list[tuple[Any, str]], device: torch.device) -> Iterator[None]:
    """Replace ``owner.<method>`` by its meta shim for the duration of the block (restored afterwards).
    Enter it before :meth:`~benchmarks.instrument.ModelMeter.watch`, so the meter sees every call."""
    saved: list[tuple[Any, str, Any, bool]] = []
    try:
        for owner, method in owners:
            had_own = method in vars(owner)
            original = getattr(owner, method)
            saved.append((owner, method, original, had_own))
            setattr(owner, method, meta_call(original, device))
        yield
    finally:
        for owner, method, original, had_own in reversed(saved):
            if had_own:
                setattr(owner, method, original)
            else:
                delattr(owner, method)
