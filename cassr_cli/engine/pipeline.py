"""CassrPipeline: the two cascaded stages, in order. The stages themselves live in their own modules.

1. Activation (``engine/activation.py``): ``x_ref = A(x_lr)`` at the model's native scale, resized
   (antialiased) to the target size.
2. Guided diffusion (``engine/diffusion.py``, skipped when ``steps == 0``): encode ``g_lr = E(up(x_lr))``
   and ``g_ref = E(x_ref)``, denoise from the noised reference with multiple attention over both,
   decode, colour-fix against ``x_ref``.

Per image the pipeline decides where the canvases live (``engine/canvas.py``): on the device when they fit
(every stage, the resize and the colour fix run there; the result comes back to the host once), else on
the host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.activation import ActivationStage, BicubicActivation, resize_image
from cassr_cli.engine.canvas import CanvasPlacement, choose_placement, image_canvas_bytes, to_host
from cassr_cli.errors import NumericalError
from cassr_cli.runtime.device import Runtime, enable_tf32, select_runtime

if TYPE_CHECKING:
    from cassr_cli.engine.diffusion import DiffusionStage

StageProgress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called by the stages as tiles or steps complete."""


@dataclass
class PipelineResult:
    """The upscaled image and what it took.

    Attributes:
        image: ``[1, 3, out_h, out_w]`` float32 on the CPU in [0, 1].
        stats: per-stage dicts (``seconds``, ``tiles``, ``peak_memory_bytes`` …) for ``--json``.
    """

    image: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


class CassrPipeline:
    """The cascade: stage 1 always, stage 2 when a :class:`DiffusionStage` is given.

    Args:
        activation: the stage-1 model in its tiled runner.
        diffusion: the stage-2 engine, or None for ``--steps 0``.
    """

    def __init__(self, activation: ActivationStage, diffusion: DiffusionStage | None = None, *, canvas: str = "auto") -> None:
        self.activation = activation
        self.diffusion = diffusion
        self.canvas = canvas

    @classmethod
    def from_config(cls, config: UpscaleConfig, runtime: Runtime | None = None) -> CassrPipeline:
        """Load the models ``config`` names (weights directory names or paths) onto ``runtime``.

        Every model file is located and integrity-checked before the device is touched, so missing
        weights fail fast (exit 3) without initialising CUDA.
        """
        from cassr_cli.engine.components import resolve_model_paths

        paths = resolve_model_paths(config)
        runtime = runtime or select_runtime(config.device, config.dtype)
        enable_tf32(runtime)
        activation: ActivationStage | BicubicActivation
        if paths.activation is None:
            activation = BicubicActivation(runtime, scale=math.ceil(config.scale))
        else:
            activation = ActivationStage.from_file(
                paths.activation,
                runtime,
                tile_size=config.activation_tile_size,
                tile_overlap=config.activation_tile_overlap,
                tile_batch=config.activation_tile_batch,
            )
        diffusion = None
        if paths.base is not None:
            from cassr_cli.engine.diffusion import DiffusionStage

            diffusion = DiffusionStage.load(config, runtime, paths.base, paths.adapter)
        pipeline = cls(activation, diffusion, canvas=config.canvas)
        if config.compile:
            pipeline.compile()
        return pipeline

    def compile(self) -> None:
        """``torch.compile`` every model of the cascade (``engine/compile.py``)."""
        from cassr_cli.engine.compile import compile_activation, compile_unet, compile_vae

        device = self.activation.runtime.device
        if isinstance(self.activation, ActivationStage):  # the built-in bicubic has no network
            compile_activation(_network(self.activation.model), device)
        if self.diffusion is not None:
            base = self.diffusion.base
            compile_unet(base.unet, device, keeps_bank=self.diffusion.settings.guidance().keeps_bank)
            compile_vae(base.vae, device)

    @torch.inference_mode()
    def __call__(
        self,
        image: torch.Tensor,
        *,
        out_size: tuple[int, int],
        generator: torch.Generator | None = None,
        progress: StageProgress | None = None,
    ) -> PipelineResult:
        """Upscale one image.

        Args:
            image: ``[1, 3, H, W]`` float32 on the CPU in [0, 1].
            out_size: ``(out_h, out_w)`` of the result.
            generator: CPU generator for all noise of this image (stage 2); a fixed seed if None.
            progress: optional progress callback.
        """
        stats: dict[str, Any] = {}
        out_h, out_w = out_size

        def stage_progress(name: str) -> Callable[[int, int], None] | None:
            if progress is None:
                return None
            return lambda done, total: progress(name, done, total)

        placement = self.placement(image, out_size)
        native, act_stats = self.activation(image, placement=placement, progress=stage_progress("activation"))
        start = time.perf_counter()
        reference = resize_image(native, out_h, out_w)
        del native
        stats["activation"] = asdict(act_stats)
        stats["activation"]["resize_seconds"] = time.perf_counter() - start
        stats["canvas"] = placement.name
        if self.diffusion is None:
            _require_finite(reference, "stage 1 (activation)")
            return PipelineResult(to_host(reference), stats)
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(0)
        result, diffusion_stats = self.diffusion(
            image, reference, generator=generator, placement=placement, progress=progress
        )
        stats.update(diffusion_stats)
        _require_finite(result, "stage 2")
        return PipelineResult(to_host(result), stats)

    def placement(self, image: torch.Tensor, out_size: tuple[int, int]) -> CanvasPlacement:
        """Where this image's canvases live (``canvas`` setting; ``auto`` decides by their size)."""
        scale = self.activation.scale
        native = (image.shape[-2] * scale, image.shape[-1] * scale)
        needed = image_canvas_bytes(native, out_size, diffusion=self.diffusion is not None)
        return choose_placement(self.activation.runtime.device, self.canvas, needed)

    def close(self) -> None:
        """Give the base model's UNet its original attention processors back."""
        if self.diffusion is not None:
            self.diffusion.close()


def _network(model: Any) -> torch.nn.Module:
    """The ``nn.Module`` behind a stage-1 model (spandrel's descriptor wraps it as ``.model``)."""
    inner = getattr(model, "model", model)
    if not isinstance(inner, torch.nn.Module):
        raise TypeError(f"cannot compile the activation model {type(model).__name__}")
    return inner


def _require_finite(image: torch.Tensor, stage: str) -> None:
    """Refuse NaN/Inf pixels (they would be written as black) with a clear per-image error. One read of
    the device per image; a dry run on the meta device has no values to check."""
    if not image.is_meta and not bool(torch.isfinite(image).all()):
        raise NumericalError(
            f"{stage} produced NaN/Inf pixels", hint="try --dtype fp32 (half precision can overflow)"
        )
