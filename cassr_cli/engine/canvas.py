"""Where an image's canvases live, and how tiles computed on the device reach them.

Two paths, chosen per image (:func:`choose_placement`):

* **device path** — the image's canvases (stage-1 input and output, the reference, the VAE's pixel input and
  decoded output) live on the compute device; tiles are cut, blended, colour-fixed and resized there, with
  no per-tile copy and no per-tile synchronisation. Used when the canvases fit a budget
  (:data:`DEVICE_CANVAS_FRACTION` of free device memory), and always on the CPU.
* **host path** — canvases live in host memory and only tiles visit the device, so device memory is
  bounded by the tile whatever the image size. Tile outputs go back through pinned buffers with
  asynchronous copies; a tile is blended on the host while the device already computes the next one.

:class:`TileAccumulator` hides the difference from the stages: ``add`` a tile's output (on the compute
device), ``finish`` for the canvas. On the device path the tiles go into a
:class:`~cassr_cli.tiling.blend.TileStack` (one copy per tile batch, one fold for the canvas). The small
latent canvases always live on the compute device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cassr_cli.tiling.blend import TileBlender, TileStack
from cassr_cli.tiling.plan import Tile, TilePlan

DEVICE_CANVAS_FRACTION = 0.25
"""Share of the free device memory an image's canvases may take on the device path."""


@dataclass(frozen=True)
class CanvasPlacement:
    """Where canvases live for one image.

    Attributes:
        compute: the device models run on.
        canvas: where pixel canvases live (``compute`` on the device path, the CPU on the host path).
        staged: tiles travel between the two through pinned host buffers (the host path).
    """

    compute: torch.device
    canvas: torch.device
    staged: bool

    @classmethod
    def device_path(cls, compute: torch.device) -> CanvasPlacement:
        return cls(compute, compute, False)

    @classmethod
    def host_path(cls, compute: torch.device) -> CanvasPlacement:
        return cls(compute, torch.device("cpu"), True)

    @property
    def name(self) -> str:
        return "host" if self.staged else "device"

    def to_compute(self, x: torch.Tensor) -> torch.Tensor:
        """A canvas crop moved to the compute device (through pinned memory on the host path)."""
        if x.device == self.compute:
            return x
        if self.compute.type == "cuda" and x.device.type == "cpu":
            x = x.contiguous().pin_memory()  # the caching host allocator reuses pinned blocks
        return x.to(self.compute, non_blocking=True)

    def to_canvas(self, x: torch.Tensor) -> torch.Tensor:
        """A whole image moved to where canvases live (once per image)."""
        if x.device == self.canvas:
            return x
        if self.canvas.type == "cuda" and x.device.type == "cpu":
            x = x.contiguous().pin_memory()
        return x.to(self.canvas, non_blocking=True)


def to_host(x: torch.Tensor) -> torch.Tensor:
    """The finished image on the host: one copy per image (a dry run's meta tensors stay as they are)."""
    return x if x.is_meta else x.cpu()


def image_canvas_bytes(native: tuple[int, int], out: tuple[int, int], *, diffusion: bool) -> int:
    """Device bytes of one image's float32 canvases on the device path: the stage-1 input, its tile stack
    and native output (``native`` = its height, width), the reference at the output size; with stage 2 also
    the padded reference, the up-sampled LR (and its padded copy), the decoded tile stack (about 1.6 canvases
    with a quarter-tile overlap) and canvas, and the colour fix's two temporaries."""
    native_px = native[0] * native[1]
    out_px = out[0] * out[1]
    canvases = 1 + (9 if diffusion else 0)
    return 4 * 3 * (4 * native_px + canvases * out_px)


def choose_placement(compute: torch.device, mode: str, canvas_bytes: int) -> CanvasPlacement:
    """The placement for ``mode`` (``auto``, ``device`` or ``host``); ``auto`` takes the device path when
    ``canvas_bytes`` fit :data:`DEVICE_CANVAS_FRACTION` of the device's free memory (always off CUDA).
    ``host`` on a CPU stages tiles through host buffers all the same (pointless there, but it runs the host
    path's code)."""
    if mode == "host":
        return CanvasPlacement.host_path(compute)
    if mode == "device" or compute.type != "cuda":
        return CanvasPlacement.device_path(compute)
    free, _ = torch.cuda.mem_get_info(compute)
    if canvas_bytes <= DEVICE_CANVAS_FRACTION * free:
        return CanvasPlacement.device_path(compute)
    return CanvasPlacement.host_path(compute)


class TileAccumulator:
    """Blends tile outputs (on the compute device) into a canvas ``[*leading, H, W]`` (float32) where the
    placement keeps canvases.

    On the host path a tile's output is copied into a pinned host buffer asynchronously and blended when
    the next tile arrives (or at :meth:`finish`), so the host waits for one copy while the device runs the
    next tile; host memory beyond the canvas is two tiles.

    Args:
        plan: the stage's plan in canvas coordinates.
        leading: the canvas's leading dimensions, e.g. ``(1, 3)``.
        placement: where the canvas lives.
    """

    def __init__(self, plan: TilePlan, leading: Sequence[int], placement: CanvasPlacement) -> None:
        if leading[0] != 1:
            raise ValueError("a tile accumulator holds one image")
        self.placement = placement
        self.blender = TileBlender(plan, device=placement.canvas, dtype=torch.float32, reuse=not placement.staged)
        self._stack = None if placement.staged else TileStack(self.blender, leading[1])
        self.canvas = self.blender.zeros(leading) if placement.staged else None
        self._pending: tuple[Tile, torch.Tensor, object | None] | None = None

    def add(self, tile: Tile, value: torch.Tensor) -> None:
        """Blend ``value`` ``[*leading, tile_h, tile_w]`` into ``tile``'s place (once per tile)."""
        if self._stack is not None:
            self._stack.put((tile,), value)
            return
        pinned = value.device.type == "cuda"
        host = torch.empty(value.shape, dtype=torch.float32, device="cpu", pin_memory=pinned)
        host.copy_(value, non_blocking=pinned)
        event = None
        if pinned:
            event = torch.cuda.Event()
            event.record()
        self._flush()
        self._pending = (tile, host, event)

    def add_batch(self, tiles: Sequence[Tile], values: torch.Tensor) -> None:
        """:meth:`add` for ``values`` ``[len(tiles), *leading[1:], tile_h, tile_w]`` (consecutive plan tiles)."""
        if self._stack is not None:
            self._stack.put(tiles, values)
            return
        for j, tile in enumerate(tiles):
            self.add(tile, values[j : j + 1])

    def _flush(self) -> None:
        if self._pending is None:
            return
        tile, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # type: ignore[attr-defined] - this tile's copy only; the device runs on
        assert self.canvas is not None
        self.blender.add(self.canvas, tile, host)

    def finish(self) -> torch.Tensor:
        """The canvas ``[*leading, H, W]``, with every tile blended in."""
        if self._stack is not None:
            return self._stack.blend()
        self._flush()
        assert self.canvas is not None
        return self.canvas
