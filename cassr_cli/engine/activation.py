"""Stage 1, image activation: a feed-forward SR/restoration network run in blended pixel tiles.

Any architecture that spandrel loads works (Real-ESRGAN RRDBNet and compact, SwinIR, HAT, DAT, SPAN …).
Tiles of one plan all have the same size, so ``tile_batch`` of them go through the model in one call. The
image and the output canvas live where the image's :class:`~cassr_cli.engine.canvas.CanvasPlacement` puts
them: on the device (tiles cut and blended there, no per-tile copy or synchronisation) or on the host (one
tile batch on the device at a time, outputs copied back through pinned buffers), so device memory is
bounded by the tile batch. Out of memory halves the tile batch, then the tile, and restarts the stage
(:func:`~cassr_cli.engine.oom.retry_on_oom`), down to one tile of :data:`MIN_TILE`; then the image fails
with :class:`~cassr_cli.errors.TileOutOfMemoryError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from cassr_cli.engine.batch_size import ACTIVATION_FALLBACK, activation_tile_bytes, resolve_tile_batch
from cassr_cli.engine.canvas import CanvasPlacement, TileAccumulator
from cassr_cli.engine.oom import retry_on_oom
from cassr_cli.errors import ModelLoadError
from cassr_cli.runtime.device import (
    Runtime,
    free_memory_bytes,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
)
from cassr_cli.tiling.plan import TilePlan, padded_size, plan_tiles

logger = logging.getLogger(__name__)

MIN_TILE = 32
"""Smallest stage-1 tile (input pixels) tried after out-of-memory errors before giving up."""

ALIGN = 8
"""Pixel alignment of stage-1 tiles and of the padded image."""

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` called after each tile."""


@dataclass
class ActivationStats:
    """What stage 1 did for one image (reported in ``--json`` stats)."""

    seconds: float = 0.0
    tiles: int = 0
    tile_size: int = 0
    tile_batch: int = 0
    oom_retries: int = 0
    peak_memory_bytes: int = 0
    dtype: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` at the bottom/right to multiples of ``multiple`` (reflect; replicate where
    the image is too small to reflect). Crop back with ``[..., :H, :W]``."""
    height, width = image.shape[-2:]
    pad_h = padded_size(height, multiple) - height
    pad_w = padded_size(width, multiple) - width
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of ``[B, C, h, w]`` float to ``[B, C, height, width]``, clamped to [0, 1].
    Returns the input unchanged when the size already matches."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    out = F.interpolate(image, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def choose_dtype(requested: torch.dtype, *, supports_half: bool, supports_bf16: bool, device: torch.device) -> torch.dtype:
    """The compute dtype for a model: the requested half type if the model supports it, else the other
    half type if supported (CUDA only), else fp32."""
    if requested is torch.float16 and supports_half:
        return requested
    if requested is torch.bfloat16 and supports_bf16:
        return requested
    if requested in (torch.float16, torch.bfloat16) and device.type == "cuda":
        if supports_bf16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if supports_half:
            return torch.float16
    return torch.float32


@dataclass(frozen=True)
class ActivationSize:
    """What out-of-memory back-off shrinks in stage 1: the tile (input pixels) and the tile batch."""

    tile: int
    batch: int

    def __str__(self) -> str:
        return f"{self.tile}-pixel tiles, {self.batch} per call"


class ActivationStage:
    """Run an image-to-image network in blended tiles.

    Args:
        model: maps ``[B, 3, h, w]`` in [0, 1] (``dtype`` on ``runtime.device``) to
            ``[B, 3, h·scale, w·scale]`` in [0, 1].
        scale: the model's native integer scale.
        runtime: device; ``dtype`` is the model's compute dtype (see :func:`choose_dtype`).
        tile_size: tile edge in input pixels (multiple of 8).
        tile_overlap: overlap between tiles in input pixels (multiple of 8), also the blend ramp.
        tile_batch: tiles per model call.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        *,
        scale: int,
        runtime: Runtime,
        dtype: torch.dtype,
        tile_size: int,
        tile_overlap: int,
        tile_batch: int = 1,
        name: str = "activation",
    ) -> None:
        self.model = model
        self.scale = int(scale)
        self.runtime = runtime
        self.dtype = dtype
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.tile_batch = tile_batch
        self.name = name

    @classmethod
    def from_file(
        cls, path: Path, runtime: Runtime, *, tile_size: int, tile_overlap: int, tile_batch: int = 1
    ) -> ActivationStage:
        """Load any spandrel-supported ``.pth``/``.safetensors`` model (restricted unpickler for .pth)."""
        descriptor = load_descriptor(path, runtime)
        dtype = choose_dtype(
            runtime.dtype,
            supports_half=descriptor.supports_half,
            supports_bf16=descriptor.supports_bfloat16,
            device=runtime.device,
        )
        descriptor.to(device=runtime.device, dtype=dtype)
        descriptor.eval()
        return cls(
            descriptor,
            scale=descriptor.scale,
            runtime=runtime,
            dtype=dtype,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            tile_batch=tile_batch,
            name=f"{descriptor.architecture.name} ×{descriptor.scale} ({path.name})",
        )

    def activate(
        self,
        image: torch.Tensor,
        *,
        out_size: tuple[int, int],
        generator: torch.Generator | None = None,
        placement: CanvasPlacement | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, object]]:
        """Stage 1 for the pipeline: ``x_ref`` ``[1, 3, out_h, out_w]`` float32 in [0, 1] on the placement's
        canvas device (the native-scale output resized, antialiased) and the stats as a dict. ``generator``
        is unused (the network is deterministic); the signature is the one every activation offers."""
        report = None if progress is None else (lambda done, total: progress("activation", done, total))
        native, stats = self(image, placement=placement, progress=report)
        start = time.perf_counter()
        reference = resize_image(native, *out_size)
        del native
        values: dict[str, object] = {**asdict(stats), "kind": "spandrel", "resize_seconds": time.perf_counter() - start}
        return reference, values

    def close(self) -> None:
        """Nothing to release (the signature every activation offers)."""

    def __call__(
        self, image: torch.Tensor, *, placement: CanvasPlacement | None = None, progress: ProgressFn | None = None
    ) -> tuple[torch.Tensor, ActivationStats]:
        """Upscale ``image`` ``[1, 3, H, W]`` float32 in [0, 1] by the native scale.

        Returns ``[1, 3, H·scale, W·scale]`` float32 in [0, 1] on the placement's canvas device (default:
        the device path) and the stage's stats.
        """
        stats = ActivationStats(dtype=str(self.dtype).removeprefix("torch."))
        device = self.runtime.device
        placement = placement or CanvasPlacement.device_path(device)
        image = placement.to_canvas(image)
        reset_peak_memory(device)
        start = time.perf_counter()
        (out, tiles), size, retries = retry_on_oom(
            lambda size: self._run(image, size, placement, progress),
            ActivationSize(self.tile_size, self._batch(image)),
            _smaller,
            device=device,
            stage="stage 1",
            hint="free GPU memory (close other programs) or use --device cpu",
        )
        synchronize(device)
        stats.seconds = time.perf_counter() - start
        stats.tiles = tiles
        stats.tile_size = size.tile
        stats.tile_batch = size.batch
        stats.oom_retries = retries
        stats.peak_memory_bytes = peak_memory_bytes(device)
        return out, stats

    def _plan(self, height: int, width: int, tile: int) -> TilePlan:
        """The tile plan over a ``height × width`` image (padded to :data:`ALIGN`) for ``tile``-pixel tiles."""
        overlap = min(self.tile_overlap, (tile // 2) // ALIGN * ALIGN)
        return plan_tiles(padded_size(height, ALIGN), padded_size(width, ALIGN), tile, overlap, ALIGN)

    def _batch(self, image: torch.Tensor) -> int:
        """Tiles per call for ``image`` ``[1, 3, H, W]``: the setting, or auto from free device memory."""
        plan = self._plan(*image.shape[-2:], self.tile_size)
        out_pixels = plan.tile_height * plan.tile_width * self.scale**2
        return resolve_tile_batch(
            self.tile_batch, tiles=len(plan), tile_bytes=activation_tile_bytes(out_pixels, self.dtype),
            free_bytes=free_memory_bytes(self.runtime), fallback=ACTIVATION_FALLBACK,
        )

    def _run(
        self, image: torch.Tensor, size: ActivationSize, placement: CanvasPlacement, progress: ProgressFn | None
    ) -> tuple[torch.Tensor, int]:
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, ALIGN)
        plan = self._plan(height, width, size.tile)
        out_plan = plan.scaled(self.scale)
        accumulator = TileAccumulator(out_plan, (1, 3), placement)
        tiles_in, tiles_out = list(plan), list(out_plan)
        done = 0
        with torch.inference_mode():
            for batch in plan.batches(size.batch):
                x = torch.cat([padded[..., t.y0 : t.y1, t.x0 : t.x1] for t in batch], 0)
                y = self.model(placement.to_compute(x).to(self.dtype))
                expected = (len(batch), 3, batch[0].height * self.scale, batch[0].width * self.scale)
                if tuple(y.shape) != expected:
                    raise ModelLoadError(
                        f"activation model {self.name} returned {tuple(y.shape)} for a {tuple(x.shape)} tile batch; "
                        f"expected {expected}",
                    )
                accumulator.add_batch(tiles_out[done : done + len(batch)], y.float())
                done += len(batch)
                if progress is not None:
                    progress(done, len(tiles_in))
        canvas = accumulator.finish()
        return canvas[..., : height * self.scale, : width * self.scale].clamp_(0.0, 1.0), len(plan)


class BicubicActivation:
    """Stage 1 without a model (``--activation bicubic``): ``x_ref`` is the input resized by
    :func:`resize_image` to ``scale`` times its size — the same resize stage 2 gives the LR guidance stream,
    so with this activation both streams see the same image. This is the paper's ablation "without image
    activation" (diffusion from the LR alone), not a way to upscale.

    Args:
        runtime: device (the resize runs where the placement's canvases live, in float32).
        scale: the integer up-sampling factor of ``x_ref`` (the pipeline resizes it to the output size).
    """

    name = "bicubic"

    def __init__(self, runtime: Runtime, *, scale: int) -> None:
        self.runtime = runtime
        self.scale = int(scale)
        self.dtype = torch.float32

    def activate(
        self,
        image: torch.Tensor,
        *,
        out_size: tuple[int, int],
        generator: torch.Generator | None = None,
        placement: CanvasPlacement | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, object]]:
        """Stage 1 for the pipeline: ``x_ref`` ``[1, 3, out_h, out_w]`` = ``resize_image(image, out_size)``
        (exactly stage 2's LR stream image) on the placement's canvas device, and the stats as a dict.
        ``generator`` is unused (the signature every activation offers)."""
        placement = placement or CanvasPlacement.device_path(self.runtime.device)
        start = time.perf_counter()
        reference = resize_image(placement.to_canvas(image), *out_size)
        if progress is not None:
            progress("activation", 1, 1)
        stats = ActivationStats(seconds=time.perf_counter() - start, dtype="float32")
        return reference, {**asdict(stats), "kind": "bicubic", "resize_seconds": 0.0}

    def close(self) -> None:
        """Nothing to release (the signature every activation offers)."""


def _smaller(size: ActivationSize) -> ActivationSize | None:
    """Halve the tile batch, then the tile (aligned), down to one tile of :data:`MIN_TILE`."""
    if size.batch > 1:
        return ActivationSize(size.tile, size.batch // 2)
    smaller = (size.tile // 2) // ALIGN * ALIGN
    return ActivationSize(smaller, 1) if smaller >= MIN_TILE else None


def load_descriptor(path: Path, runtime: Runtime):  # noqa: ANN201 - spandrel's ImageModelDescriptor
    """Load ``path`` with spandrel (restricted unpickling for ``.pth``; never a bare ``torch.load``)."""
    from spandrel import ImageModelDescriptor, ModelLoader

    try:
        descriptor = ModelLoader(device="cpu").load_from_file(path)
    except Exception as err:  # spandrel raises several types for unsupported/corrupt files
        if path.suffix.lower() == ".safetensors":  # not an SCEdit tuner either (components.activation_kind)
            raise ModelLoadError(
                f"{path} is neither a spandrel model nor a cassr SCEdit tuner (spandrel: {type(err).__name__}: {err})",
                hint="use a model spandrel supports, a tuner from `cassr train` with model.kind = \"scedit\", "
                "or the default: cassr download-weights",
            ) from err
        raise ModelLoadError(
            f"cannot load activation model {path}: {type(err).__name__}: {err}",
            hint="use a model spandrel supports (.pth or .safetensors), or the default: cassr download-weights",
        ) from err
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ModelLoadError(f"{path} is not an image-to-image model (spandrel: {type(descriptor).__name__})")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelLoadError(
            f"activation model {path} maps {descriptor.input_channels}→{descriptor.output_channels} channels; "
            "cassr needs an RGB→RGB model"
        )
    return descriptor
