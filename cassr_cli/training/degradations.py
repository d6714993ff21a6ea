"""Real-ESRGAN's second-order degradation model, batched on the training device, every draw from one generator.

``degrade(hr, config, generator)`` turns clean HR photos ``[B, 3, H, W]`` into realistic LR inputs
``[B, 3, H / scale, W / scale]``, following Real-ESRGAN's ``RealESRGANModel.feed_data`` (the synthesis
half; the USM sharpening of the target, the random crop and the training-pair queue are not part of it):

1. **first stage** (:attr:`DegradationConfig.first`): blur → random resize relative to the HR size →
   Gaussian or Poisson noise (colour or gray) → JPEG;
2. **second stage** (:attr:`DegradationConfig.second`): the same code with its own ranges: blur (with
   ``blur_prob``) → random resize relative to the LR size → noise; its JPEG is ordered by step 3;
3. **final** (:attr:`DegradationConfig.final`): ``[resize to the LR size + final sinc filter]`` and the
   second stage's JPEG, in random order (sinc first with ``sinc_first_prob``);
4. rounding to 8-bit levels and clamping to ``[0, 1]``, as Real-ESRGAN does.

Randomness: every draw comes from the ``torch.Generator`` passed in — no ``random``, no ``numpy.random``,
no global torch RNG. The generator may live on the CPU (the usual choice: results then do not depend on
the data's device except for floating-point differences of convolution and resizing) or on the data's
device (noise fields are then drawn there without a host copy). Small parameters (kernel shapes, noise
levels, qualities, branch choices) are drawn on the generator's device and read on the CPU; noise fields
are drawn on the generator's device and moved to the data's device. The sequence of draws depends only
on the config and the batch shape, so the same seed gives the same output (bitwise on the CPU).

Per image: blur kernel (family, size, σ, θ, β, or sinc), whether the second blur happens, noise type,
level and colour/gray, JPEG qualities, final sinc kernel and final order. Per batch, as in Real-ESRGAN
(a batch must keep one shape): resize direction, factor and interpolation mode of each stage, and the
final resize mode.

Deliberate differences from Real-ESRGAN (its behaviour in parentheses): real libjpeg JPEG at integer
qualities (``DiffJPEG`` at float qualities); noise type, second-blur decision and final order drawn per image
(once per batch); gray Gaussian noise drawn per image (one gray field shared by the batch, scaled per image);
resizes to an explicit ``int(base · factor)`` size (``scale_factor=`` in the first stage, which maps
coordinates with the unrounded factor); images too small for reflection padding are replicate-padded (an
error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from cassr_cli.errors import ConfigError
from cassr_cli.training.jpeg import JPEG_QUALITY_MAX, JPEG_QUALITY_MIN, jpeg_compress
from cassr_cli.training.kernels import (
    KernelConfig,
    check_odd_sizes,
    check_prob,
    check_probs,
    check_range,
    choose,
    choose_uniform,
    pulse_kernels,
    random_kernels,
    random_sinc_kernels,
    sinc_kernel,
    uniform,
)

__all__ = [  # the pipeline, its config, and every operation it composes (kernels: see kernels.py)
    "DegradationConfig",
    "DegradationPipeline",
    "DegradationStage",
    "FinalStage",
    "KernelConfig",
    "add_gaussian_noise",
    "add_poisson_noise",
    "apply_blur",
    "apply_stage",
    "degrade",
    "jpeg_compress",
    "quantize_8bit",
    "random_jpeg_qualities",
    "random_kernels",
    "random_noise",
    "random_resize",
    "resize",
    "second_stage_defaults",
    "sinc_kernel",
]

ResizeMode = Literal["area", "bilinear", "bicubic"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
"""RGB → luma weights of the gray Poisson noise (torchvision's ``rgb_to_grayscale``, as BasicSR uses)."""


@dataclass(frozen=True)
class DegradationStage:
    """One order of degradation: blur → random resize → noise → JPEG. Defaults: Real-ESRGAN's first stage
    (``options/train_realesrgan_x4plus.yml``); :func:`second_stage_defaults` gives the second.

    Attributes:
        blur_prob: probability that an image is blurred at all. Default ``1.0`` (the first stage always
            blurs; the second uses ``second_blur_prob = 0.8``).
        kernel: how the blur kernel is drawn (:class:`KernelConfig`; its defaults are the first stage's:
            sizes 7–21, the six families with ``kernel_prob``, ``blur_sigma (0.2, 3)``, ``betag_range
            (0.5, 4)``, ``betap_range (1, 2)``, ``sinc_prob 0.1``).
        resize_probs: probabilities of resizing up, down, or keeping the size. Default ``(0.2, 0.7, 0.1)``
            (``resize_prob``; the second stage's ``resize_prob2`` is ``(0.3, 0.4, 0.3)``).
        resize_range: ``(min, max)`` resize factor; "up" draws ``U(1, max)``, "down" ``U(min, 1)``. The first
            stage's factor applies to the HR size, the second stage's to the LR size (``H / scale``).
            Default ``(0.15, 1.5)`` (``resize_range``; second ``(0.3, 1.2)``).
        resize_modes: interpolation modes, one drawn uniformly. Default ``("area", "bilinear", "bicubic")``.
        gaussian_noise_prob: probability of Gaussian noise; Poisson noise otherwise. Default ``0.5``
            (``gaussian_noise_prob``, and ``gaussian_noise_prob2``).
        noise_range: Gaussian noise standard deviation in 8-bit levels (``σ / 255`` on ``[0, 1]`` pixels).
            Default ``(1, 30)`` (``noise_range``; second ``(1, 25)``).
        poisson_scale_range: multiplier of the Poisson (shot) noise. Default ``(0.05, 3)``
            (``poisson_scale_range``; second ``(0.05, 2.5)``).
        gray_noise_prob: probability that the noise is gray (the same on R, G and B). Default ``0.4``
            (``gray_noise_prob``, and ``gray_noise_prob2``).
        jpeg_range: JPEG quality, an integer drawn uniformly in ``[min, max]`` (Real-ESRGAN draws a float
            for its simulated JPEG; libjpeg takes integers). Default ``(30, 95)`` (``jpeg_range``, and
            ``jpeg_range2`` for the JPEG that the final step orders around the sinc filter).
    """

    blur_prob: float = 1.0
    kernel: KernelConfig = field(default_factory=KernelConfig)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[ResizeMode, ...] = RESIZE_MODES
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "gaussian_noise_prob", "gray_noise_prob"):
            check_prob(name, getattr(self, name))
        check_probs("resize_probs (up, down, keep)", self.resize_probs, 3)
        lo, hi = self.resize_range
        if not 0 < lo <= 1 <= hi:
            raise ConfigError(
                f"invalid resize_range = {self.resize_range!r}: expected (min, max), 0 < min <= 1 <= max"
            )
        _check_modes("resize_modes", self.resize_modes)
        check_range("noise_range", self.noise_range, low=0.0)
        check_range("poisson_scale_range", self.poisson_scale_range, low=0.0)
        lo_q, hi_q = self.jpeg_range
        if not JPEG_QUALITY_MIN <= lo_q <= hi_q <= JPEG_QUALITY_MAX:
            raise ConfigError(f"invalid jpeg_range = {self.jpeg_range!r}: expected 1 <= min <= max <= 100")


def second_stage_defaults() -> DegradationStage:
    """Real-ESRGAN's second stage: ``second_blur_prob 0.8``, ``blur_sigma2 (0.2, 1.5)``, ``resize_prob2
    (0.3, 0.4, 0.3)``, ``resize_range2 (0.3, 1.2)``, ``noise_range2 (1, 25)``, ``poisson_scale_range2
    (0.05, 2.5)``; everything else as the first stage (kernel list, probabilities, β ranges, sinc_prob2 0.1,
    gaussian_noise_prob2 0.5, gray_noise_prob2 0.4, jpeg_range2 (30, 95))."""
    return DegradationStage(
        blur_prob=0.8,
        kernel=KernelConfig(sigma_range=(0.2, 1.5)),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass(frozen=True)
class FinalStage:
    """The last step: resize to the LR size plus a sinc filter, ordered randomly around the last JPEG.

    Attributes:
        sinc_prob: probability of a sinc filter (identity otherwise). Default ``0.8`` (``final_sinc_prob``).
        sinc_kernel_sizes: odd sizes of the final sinc kernel, drawn uniformly. Default ``(7, 9, …, 21)``.
        sinc_cutoff_range: its cutoff in radians per sample, drawn uniformly. Default ``(π/3, π)``. These two
            are hard-coded in ``RealESRGANDataset``, not options of its YAML.
        resize_modes: interpolation of the resize to the LR size, one per batch. Default area/bilinear/bicubic.
        sinc_first_prob: probability of ``[resize + sinc] → JPEG``; otherwise ``JPEG → [resize + sinc]``.
            Default ``0.5`` (``np.random.uniform() < 0.5`` in ``feed_data``, there once per batch, here per image).
    """

    sinc_prob: float = 0.8
    sinc_kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    sinc_cutoff_range: tuple[float, float] = (math.pi / 3, math.pi)
    resize_modes: tuple[ResizeMode, ...] = RESIZE_MODES
    sinc_first_prob: float = 0.5

    def __post_init__(self) -> None:
        check_prob("sinc_prob", self.sinc_prob)
        check_prob("sinc_first_prob", self.sinc_first_prob)
        check_odd_sizes("sinc_kernel_sizes", self.sinc_kernel_sizes)
        check_range("sinc_cutoff_range", self.sinc_cutoff_range, low=1e-6)
        _check_modes("resize_modes", self.resize_modes)


@dataclass(frozen=True)
class DegradationConfig:
    """The whole degradation model. Defaults: Real-ESRGAN x4plus, read from xinntao/Real-ESRGAN's
    ``options/train_realesrnet_x4plus.yml`` and ``train_realesrgan_x4plus.yml`` (identical degradation
    options) and the values hard-coded in ``RealESRGANDataset`` / ``RealESRGANModel``. The CasSR paper does
    not publish its own degradation settings (as far as its published summary says), so using
    Real-ESRGAN's for it is an assumption.

    Attributes:
        scale: HR size / LR size; HR height and width must be multiples of it. Default ``4``.
        first: the first-order stage. Default :class:`DegradationStage` ``()``.
        second: the second-order stage. Default :func:`second_stage_defaults`.
        final: resize to LR + final sinc + order of the last JPEG. Default :class:`FinalStage` ``()``.
    """

    scale: int = 4
    first: DegradationStage = field(default_factory=DegradationStage)
    second: DegradationStage = field(default_factory=second_stage_defaults)
    final: FinalStage = field(default_factory=FinalStage)

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ConfigError(f"invalid scale = {self.scale!r}: expected an integer >= 1")


def _check_modes(name: str, modes: tuple[str, ...]) -> None:
    if not modes or any(m not in RESIZE_MODES for m in modes):
        raise ConfigError(f"invalid {name} = {modes!r}: expected a non-empty subset of {RESIZE_MODES}")


# --- individual operations ------------------------------------------------------------------------------


def apply_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter every image with its own kernel (grouped convolution, one group per image and channel).

    Borders are reflect-padded by ``K // 2``; images too small for that (``H`` or ``W <= K // 2``) are
    replicate-padded instead.

    Args:
        x: ``[B, C, H, W]`` floating point, any device.
        kernels: ``[B, K, K]`` (one per image) or ``[K, K]`` (shared), ``K`` odd; any dtype and device
            (cast to ``x``'s).

    Returns:
        ``[B, C, H, W]``, same device and dtype as ``x``. Not clamped (sinc kernels can overshoot).
    """
    b, c, h, w = x.shape
    if kernels.ndim == 2:
        kernels = kernels.expand(b, *kernels.shape)
    k = kernels.shape[-1]
    if kernels.shape != (b, k, k) or k % 2 == 0:
        raise ValueError(
            f"apply_blur expects [B, K, K] kernels with K odd for B={b}, got {tuple(kernels.shape)}"
        )
    pad = k // 2
    mode = "reflect" if pad < h and pad < w else "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(device=x.device, dtype=x.dtype).repeat_interleave(c, dim=0).unsqueeze(1)
    out = F.conv2d(padded.reshape(1, b * c, h + 2 * pad, w + 2 * pad), weight, groups=b * c)
    return out.view(b, c, h, w)


def resize(x: torch.Tensor, size: tuple[int, int], mode: ResizeMode) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``size = (height, width)`` with ``area``, ``bilinear`` or ``bicubic``
    interpolation (``align_corners=False``, no antialiasing, as Real-ESRGAN). The same size is a no-op."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def random_resize(
    x: torch.Tensor,
    base_size: tuple[int, int],
    *,
    probs: tuple[float, float, float],
    scale_range: tuple[float, float],
    modes: tuple[ResizeMode, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    """Resize the whole batch by one random factor of ``base_size``, with one random mode.

    Direction up / down / keep with ``probs``; factor ``U(1, scale_range[1])`` up or ``U(scale_range[0], 1)``
    down; new size ``max(1, int(base · factor))`` per axis.

    Args:
        x: ``[B, C, H, W]`` floating point.
        base_size: ``(height, width)`` the factor applies to (the HR size in the first stage, the LR size
            in the second).
        probs, scale_range, modes: as :class:`DegradationStage` ``resize_probs``, ``resize_range``,
            ``resize_modes``.
        generator: source of the three draws.

    Returns:
        ``[B, C, H', W']``, same device and dtype; values may leave ``[0, 1]`` slightly (bicubic).
    """
    direction = int(choose(1, probs, generator))
    u = float(uniform(1, 0.0, 1.0, generator))
    mode = modes[int(choose_uniform(1, len(modes), generator))]
    lo, hi = scale_range
    factor = (1.0 + (hi - 1.0) * u, lo + (1.0 - lo) * u, 1.0)[direction]
    size = (max(1, int(base_size[0] * factor)), max(1, int(base_size[1] * factor)))
    return resize(x, size, mode)


def _randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


def add_gaussian_noise(
    x: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Add Gaussian noise of standard deviation ``sigma / 255`` per image, then clamp to ``[0, 1]``.

    Args:
        x: ``[B, C, H, W]`` floating point in ``[0, 1]``.
        sigma: ``[B]`` standard deviations in 8-bit levels.
        gray: ``[B]`` bool; gray noise is one field added identically to every channel.
        generator: source of the ``[B, C, H, W]`` normal field.

    Returns:
        ``[B, C, H, W]`` in ``[0, 1]``, same device and dtype.
    """
    b = x.shape[0]
    noise = _randn(tuple(x.shape), x, generator)
    gray_mask = gray.to(device=x.device, dtype=torch.bool).view(b, 1, 1, 1)
    noise = torch.where(gray_mask, noise[:, :1].expand_as(noise), noise)
    std = (sigma.to(device=x.device, dtype=x.dtype) / 255.0).view(b, 1, 1, 1)
    return (x + noise * std).clamp(0.0, 1.0)


def add_poisson_noise(
    x: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Add Poisson (shot) noise per image, BasicSR's ``generate_poisson_noise_pt``, then clamp to ``[0, 1]``.

    Per image: round to 8 bits, count the distinct values ``n``, use ``L = 2^ceil(log2 n)`` photon levels,
    draw ``Poisson(img · L) / L`` and add ``scale · (that - img)``. Gray noise is computed on the luma
    (:data:`GRAY_WEIGHTS`) and added identically to every channel.

    Args:
        x: ``[B, 3, H, W]`` floating point in ``[0, 1]``.
        scale: ``[B]`` noise multipliers.
        gray: ``[B]`` bool.
        generator: source of the Poisson draws (rates are copied to its device).

    Returns:
        ``[B, 3, H, W]`` in ``[0, 1]``, same device and dtype.
    """
    weights = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(3, 1, 1)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        image = x[i]
        source = (image * weights).sum(0, keepdim=True) if bool(gray[i]) else image
        levels_8bit = (source * 255.0).round().clamp(0.0, 255.0) / 255.0
        levels = 2.0 ** math.ceil(math.log2(torch.unique(levels_8bit).numel()))
        rates = (levels_8bit * levels).to(generator.device)
        sampled = torch.poisson(rates, generator=generator).to(x.device) / levels
        noise = (sampled - levels_8bit) * float(scale[i])
        out[i] = (image + noise.expand_as(image)).clamp(0.0, 1.0)
    return out


def random_noise(x: torch.Tensor, stage: DegradationStage, generator: torch.Generator) -> torch.Tensor:
    """Per image: Gaussian noise (``stage.gaussian_noise_prob``) or Poisson noise, level drawn from the
    stage's range, gray with ``stage.gray_noise_prob``. ``[B, 3, H, W]`` in and out, clamped to ``[0, 1]``."""
    b = x.shape[0]
    use_gaussian = uniform(b, 0.0, 1.0, generator) < stage.gaussian_noise_prob
    sigma = uniform(b, *stage.noise_range, generator)
    scale = uniform(b, *stage.poisson_scale_range, generator)
    gray = uniform(b, 0.0, 1.0, generator) < stage.gray_noise_prob
    out = torch.empty_like(x)
    for mask, add, level in (
        (use_gaussian, add_gaussian_noise, sigma),
        (~use_gaussian, add_poisson_noise, scale),
    ):
        idx = mask.nonzero().flatten()
        if idx.numel():
            out[idx.to(x.device)] = add(x[idx.to(x.device)], level[idx], gray[idx], generator)
    return out


def random_jpeg_qualities(
    batch: int, jpeg_range: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """``[batch]`` int64 CPU JPEG qualities, uniform over the integers ``jpeg_range[0] … jpeg_range[1]``."""
    lo, hi = jpeg_range
    return torch.randint(lo, hi + 1, (batch,), generator=generator, device=generator.device).cpu()


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels and clamp: ``clamp(round(255 · x), 0, 255) / 255`` (Real-ESRGAN's last step)."""
    return (x * 255.0).round().clamp(0.0, 255.0) / 255.0


# --- composition ----------------------------------------------------------------------------------------


def apply_stage(
    x: torch.Tensor,
    stage: DegradationStage,
    *,
    resize_base: tuple[int, int],
    generator: torch.Generator,
    jpeg: bool = True,
) -> torch.Tensor:
    """One order of degradation: blur (per image with ``stage.blur_prob``) → random resize of
    ``resize_base`` → noise → JPEG (skipped with ``jpeg=False``; the pipeline does that for the last stage,
    whose JPEG the final step places).

    Args:
        x: ``[B, 3, H, W]`` floating point in ``[0, 1]``.
        stage: the stage's options.
        resize_base: ``(height, width)`` the resize factor applies to.
        generator: the only source of randomness.
        jpeg: whether to JPEG-compress at the end.

    Returns:
        ``[B, 3, H', W']`` in ``[0, 1]``, same device and dtype.
    """
    b = x.shape[0]
    kernels = random_kernels(b, stage.kernel, generator).kernels
    blurred = uniform(b, 0.0, 1.0, generator) < stage.blur_prob
    kernels = torch.where(blurred.view(b, 1, 1), kernels, pulse_kernels(b, kernels.shape[-1]))
    x = apply_blur(x, kernels)
    x = random_resize(
        x,
        resize_base,
        probs=stage.resize_probs,
        scale_range=stage.resize_range,
        modes=stage.resize_modes,
        generator=generator,
    )
    x = random_noise(x, stage, generator)
    if jpeg:
        x = jpeg_compress(x, random_jpeg_qualities(b, stage.jpeg_range, generator))
    return x


def _final_step(
    x: torch.Tensor,
    final: FinalStage,
    jpeg_range: tuple[int, int],
    lr_size: tuple[int, int],
    generator: torch.Generator,
) -> torch.Tensor:
    """``[resize to lr_size + sinc] → JPEG`` or ``JPEG → [resize + sinc]``, chosen per image."""
    b = x.shape[0]
    sinc = random_sinc_kernels(
        b,
        prob=final.sinc_prob,
        kernel_sizes=final.sinc_kernel_sizes,
        cutoff_range=final.sinc_cutoff_range,
        generator=generator,
    ).kernels
    sinc_first = uniform(b, 0.0, 1.0, generator) < final.sinc_first_prob
    qualities = random_jpeg_qualities(b, jpeg_range, generator)
    mode = final.resize_modes[int(choose_uniform(1, len(final.resize_modes), generator))]
    out = x.new_empty((b, x.shape[1], *lr_size))
    for order in (True, False):
        idx = (sinc_first == order).nonzero().flatten()
        if not idx.numel():
            continue
        y = x[idx.to(x.device)]
        if order:
            y = jpeg_compress(apply_blur(resize(y, lr_size, mode), sinc[idx]), qualities[idx])
        else:
            y = apply_blur(resize(jpeg_compress(y, qualities[idx]), lr_size, mode), sinc[idx])
        out[idx.to(x.device)] = y
    return out


@torch.no_grad()
def degrade(hr: torch.Tensor, config: DegradationConfig, generator: torch.Generator) -> torch.Tensor:
    """Synthesize LR training inputs from HR photos with the second-order model (module docstring).

    Args:
        hr: ``[B, 3, H, W]`` RGB, floating point, values in ``[0, 1]``, any device; ``H`` and ``W``
            multiples of ``config.scale``. Not modified. (Real-ESRGAN degrades the USM-sharpened HR; sharpen
            before calling if that is wanted.)
        config: the degradation options.
        generator: the only source of randomness, on the CPU or on ``hr``'s device (module docstring).

    Returns:
        ``[B, 3, H / scale, W / scale]`` on ``hr``'s device and dtype, values on the 8-bit grid ``k / 255``
        in ``[0, 1]``. float16/bfloat16 inputs are processed in float32.

    Raises:
        ValueError: ``hr`` is not a floating ``[B, 3, H, W]`` tensor with sides divisible by the scale.
    """
    if hr.ndim != 4 or hr.shape[1] != 3 or hr.shape[0] < 1 or not hr.is_floating_point():
        raise ValueError(
            f"degrade expects a floating [B, 3, H, W] RGB batch, got {hr.dtype} {tuple(hr.shape)}"
        )
    h, w = hr.shape[-2:]
    if h % config.scale or w % config.scale:
        raise ValueError(
            f"HR size {h}x{w} is not divisible by scale {config.scale}: crop HR images to a multiple of it"
        )
    work = hr.float() if hr.dtype in (torch.float16, torch.bfloat16) else hr
    lr_size = (h // config.scale, w // config.scale)
    x = apply_stage(work, config.first, resize_base=(h, w), generator=generator)
    x = apply_stage(x, config.second, resize_base=lr_size, generator=generator, jpeg=False)
    x = _final_step(x, config.final, config.second.jpeg_range, lr_size, generator)
    return quantize_8bit(x).to(hr.dtype)


class DegradationPipeline:
    """:func:`degrade` bound to one config: ``DegradationPipeline(config)(hr, generator) -> lr``.

    Holds no per-call state, so one instance can serve concurrent callers.
    """

    def __init__(self, config: DegradationConfig | None = None) -> None:
        self.config = config if config is not None else DegradationConfig()

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """See :func:`degrade`."""
        return degrade(hr, self.config, generator)
