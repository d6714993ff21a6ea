"""cassr — batch upscaler for real-world photos (CasSR cascaded diffusion super-resolution).

Public API (importing this package does not import torch; the heavy names load on first use)::

    from cassr_cli import Upscaler, UpscaleConfig, CassrPipeline, upscale_files

* :class:`Upscaler` — ``Upscaler(scale=2, steps=0)(image)``: PIL image, numpy array or path in, PIL
  image out; ``.upscale_files(sources, dest)`` for whole batches (see :mod:`cassr_cli.api`).
* :class:`UpscaleConfig` — every setting of an upscale run (frozen dataclass).
* :class:`CassrPipeline` — the two-stage model on a tiled engine:
  ``CassrPipeline.from_config(config)(image, out_size=(h, w), generator=g)`` with ``image``
  ``[1, 3, H, W]`` float32 in [0, 1] on the CPU.
* :func:`upscale_files` — the batch runner behind ``cassr upscale``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cassr_cli._version import __version__
from cassr_cli.config import UpscaleConfig

if TYPE_CHECKING:  # pragma: no cover
    from cassr_cli.api import Upscaler
    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.runner import upscale_files

__all__ = ["CassrPipeline", "UpscaleConfig", "Upscaler", "__version__", "upscale_files"]

_LAZY = {
    "Upscaler": ("cassr_cli.api", "Upscaler"),
    "CassrPipeline": ("cassr_cli.engine.pipeline", "CassrPipeline"),
    "upscale_files": ("cassr_cli.runner", "upscale_files"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'cassr_cli' has no attribute {name!r}")
