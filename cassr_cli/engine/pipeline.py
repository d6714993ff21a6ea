"""CassrPipeline: the two cascaded stages, in order. The stages themselves live in their own modules.

1. Activation: ``x_ref = A(x_lr)`` at the target size. Either a spandrel network run at its native scale
   in pixel tiles and resized (antialiased) to the target size (``engine/activation.py``), or an SCEdit
   tuner on the base model, sampled on the tiled latent engine conditioned on ``up(x_lr)``
   (``engine/scedit_activation.py``). Its noise comes from its own generator, derived from the image's
   seed, so stage 2 draws the same noise whichever activation ran.
2. Guided diffusion (``engine/diffusion.py``, skipped when ``steps == 0``): encode ``g_lr = E(up(x_lr))``
   and ``g_ref = E(x_ref)``, denoise from the noised reference with multiple attention over both,
   decode, colour-fix against ``x_ref``.

Per image the pipeline decides where the canvases live (``engine/canvas.py``): on the device when they fit
(every stage, the resize and the colour fix run there; the result comes back to the host once), else on
the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.activation import ActivationStage, BicubicActivation
from cassr_cli.engine.canvas import CanvasPlacement, choose_placement, image_canvas_bytes, to_host
from cassr_cli.errors import NumericalError
from cassr_cli.runtime.device import Runtime, enable_tf32, select_runtime
from cassr_cli.runtime.seeding import derive_seed

if TYPE_CHECKING:
    from cassr_cli.engine.diffusion import DiffusionStage
    from cassr_cli.engine.scedit_activation import SCEditActivation

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
        activation: the stage-1 model in its tiled runner (:class:`ActivationStage` or
            :class:`~cassr_cli.engine.scedit_activation.SCEditActivation`), or the built-in
            :class:`BicubicActivation`.
        diffusion: the stage-2 engine, or None for ``--steps 0``.
        canvas: where canvases live (``auto``, ``device`` or ``host``).
    """

    def __init__(
        self, activation: ActivationStage | SCEditActivation | BicubicActivation, diffusion: DiffusionStage | None = None, *, canvas: str = "auto"
    ) -> None:
        self.activation = activation
        self.diffusion = diffusion
        self.canvas = canvas

    @classmethod
    def from_config(cls, config: UpscaleConfig, runtime: Runtime | None = None) -> CassrPipeline:
        """Load the models ``config`` names (weights directory names or paths) onto ``runtime``.

        Every model file is located and integrity-checked before the device is touched, so missing
        weights fail fast (exit 3) without initialising CUDA. With a device list (``cuda:0,cuda:1``) the
        models load on the first device and the stage-2 UNet gets a replica on each further one, over which
        every denoising step spreads its tiles; stage 1 and the VAE run on the first device.
        """
        from cassr_cli.engine.components import resolve_model_paths

        paths = resolve_model_paths(config)
        devices = config.devices
        runtime = runtime or select_runtime(devices[0], config.dtype)
        others = [select_runtime(name, config.dtype) for name in devices[1:]]
        enable_tf32(runtime)
        base = None
        activation: ActivationStage | SCEditActivation | BicubicActivation
        if paths.activation_kind == "bicubic":
            activation = BicubicActivation(runtime, scale=math.ceil(config.scale))
        elif paths.activation_kind == "scedit":
            from cassr_cli.engine.base_model import load_base_model
            from cassr_cli.engine.scedit_activation import SCEditActivation

            assert paths.base is not None and paths.activation is not None
            base = load_base_model(paths.base, runtime, name=config.base_model)
            activation = SCEditActivation.load(paths.activation, base, runtime, config)
        else:
            assert paths.activation is not None
            activation = ActivationStage.from_file(
                paths.activation,
                runtime,
                tile_size=config.activation_tile_size,
                tile_overlap=config.activation_tile_overlap,
                tile_batch=config.activation_tile_batch,
            )
        diffusion = None
        if config.steps > 0:
            from cassr_cli.engine.diffusion import DiffusionStage

            assert paths.base is not None
            diffusion = DiffusionStage.load(config, runtime, paths.base, paths.adapter, base=base, replicas=others)
        elif base is not None and runtime.device.type != "cpu":
            base.text_encoder.to("cpu")  # the empty prompt is encoded; give its device memory back
        pipeline = cls(activation, diffusion, canvas=config.canvas)
        if config.compile:
            pipeline.compile()
        return pipeline

    def compile(self) -> None:
        """``torch.compile`` every model of the cascade (``engine/compile.py``)."""
        from cassr_cli.engine.compile import (
            compile_activation,
            compile_module,
            compile_tuner,
            compile_unet,
            compile_vae,
        )

        device = self.activation.runtime.device
        base = self.diffusion.base if self.diffusion is not None else None
        replicas = self.diffusion.replicas if self.diffusion is not None else []
        if isinstance(self.activation, ActivationStage):
            compile_activation(_network(self.activation.model), device)
        elif not isinstance(self.activation, BicubicActivation):  # an SCEdit activation: its tuner, and the
            compile_tuner(self.activation.tuner, device)  # base model it samples with (shared with stage 2)
            base = self.activation.base
        if base is not None:
            if replicas:  # tiles then run on worker threads, one per device: no CUDA graphs (they are per thread)
                for unet, where in [(base.unet, device)] + [(r.unet, r.device) for r in replicas]:
                    compile_module(unet, where, graphs=False)
            else:
                keeps_bank = self.diffusion is not None and self.diffusion.settings.guidance().keeps_bank
                compile_unet(base.unet, device, keeps_bank=keeps_bank)
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
            generator: CPU generator seeded with this image's seed (``manual_seed``): stage 2 draws its
                noise from it, a diffusion activation from a generator derived from its seed
                (:func:`activation_generator`). A fixed seed if None.
            progress: optional progress callback.
        """
        stats: dict[str, Any] = {}
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(0)
        placement = self.placement(image, out_size)
        reference, stats["activation"] = self.activation.activate(
            image, out_size=out_size, generator=activation_generator(generator), placement=placement, progress=progress
        )
        stats["canvas"] = placement.name
        if self.diffusion is None:
            _require_finite(reference, "stage 1 (activation)")
            return PipelineResult(to_host(reference), stats)
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
        """Give the base model's UNet its original attention processors back and remove an SCEdit tuner's
        hooks."""
        self.activation.close()
        if self.diffusion is not None:
            self.diffusion.close()


def activation_generator(generator: torch.Generator) -> torch.Generator:
    """The stage-1 generator of an image: a CPU generator seeded from ``generator``'s seed and the label
    ``activation``, so a diffusion activation's noise is distinct from stage 2's and drawing it leaves
    stage 2's stream untouched."""
    return torch.Generator("cpu").manual_seed(derive_seed(generator.initial_seed(), "activation"))


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
