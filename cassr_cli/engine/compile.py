"""``--compile``: ``torch.compile`` of the UNet, the VAE and the activation model, in channels-last layout.

Every model call of the engine has a static shape per stage (tiles of one plan, one tile batch, plus a
smaller last batch), so the models are compiled with ``dynamic=False``: each distinct shape is compiled
once, specialised, and reused for every later image of that size.

* **CUDA graphs** (``mode="reduce-overhead"``) for the VAE and the activation model: pure functions of one
  tile batch whose output is consumed before the next call, so replaying a graph removes every kernel
  launch of the call. The UNet is compiled without CUDA graphs when guidance K/V outlive a call (cached
  guidance, guidance refreshed every k steps): those K/V are outputs of one call read by later ones, and a
  CUDA graph's outputs are overwritten by its next replay. Per-step guidance keeps nothing between calls,
  so there the UNet gets CUDA graphs too.
* **channels-last** memory format for the convolutions (faster tensor-core convolutions on GPUs; oneDNN
  likes it on CPUs as well).
* The guidance passes do not break the UNet's graph: everything that varies between tile batches is
  resolved before the call (``engine/guidance.py``), which ``tests/engine/test_compile.py`` checks by
  counting graph breaks and compilations.

Compilation happens at the first call of each shape, so the first image of a run (or of a new size) is
slow; a batch amortises it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def compile_mode(device: torch.device, *, graphs: bool) -> str:
    """The ``torch.compile`` mode: CUDA graphs where allowed on CUDA, else the default (inductor kernels)."""
    if device.type == "cuda" and graphs:
        return "reduce-overhead"
    return "default"


def compile_module(module: torch.nn.Module, device: torch.device, *, graphs: bool) -> torch.nn.Module:
    """``module`` in channels-last layout, compiled in place (``nn.Module.compile``: same object, same
    attributes), for static shapes."""
    module.to(memory_format=torch.channels_last)
    module.compile(dynamic=False, mode=compile_mode(device, graphs=graphs))
    return module


def compile_vae(vae: Any, device: torch.device) -> None:
    """The VAE's encoder and decoder (the heavy parts of ``encode``/``decode``), with CUDA graphs."""
    vae.to(memory_format=torch.channels_last)
    for part in (vae.encoder, vae.decoder):
        compile_module(part, device, graphs=True)


def compile_unet(unet: torch.nn.Module, device: torch.device, *, keeps_bank: bool) -> None:
    """The UNet (multi-attention processors already installed); CUDA graphs only when no guidance K/V
    outlive a call (module docstring)."""
    compile_module(unet, device, graphs=not keeps_bank)


def compile_activation(model: torch.nn.Module, device: torch.device) -> None:
    """The stage-1 network (spandrel's ``descriptor.model``), with CUDA graphs."""
    compile_module(model, device, graphs=True)


def compile_tuner(tuner: torch.nn.Module, device: torch.device) -> None:
    """An SCEdit tuner's condition encoder (the stem and projections run once per UNet call; the SC-Tuners
    themselves run inside the UNet's up blocks, through its hooks, and are compiled with it)."""
    compile_module(tuner.encoder, device, graphs=True)  # type: ignore[arg-type]
