"""Blur kernels for the training degradations: Gaussian (isotropic and anisotropic), generalized Gaussian,
plateau and 2-D sinc (circular low-pass), built batched and sampled from an explicit ``torch.Generator``.

The kernel families and their sampling follow BasicSR's ``basicsr/data/degradations.py`` (used by
Real-ESRGAN's ``RealESRGANDataset``), re-derived here as batched tensor code:

* every kernel of a batch lives on one ``K × K`` grid, ``K = max(kernel_sizes)``; a kernel of size
  ``k < K`` is zero outside its centred ``k × k`` support, which is exactly BasicSR's "build at ``k``,
  then zero-pad to 21";
* every kernel sums to 1 over its support.

With ``Σ`` the covariance of a Gaussian of standard deviations ``σx, σy`` rotated by ``θ`` and
``q(x, y) = [x y] Σ⁻¹ [x y]ᵀ`` (the squared Mahalanobis distance from the kernel centre):

* Gaussian: ``exp(-q / 2)``; isotropic means ``σy = σx`` and ``θ = 0``;
* generalized Gaussian: ``exp(-q^β / 2)``; ``β = 1`` is the Gaussian, ``β < 1`` heavier tails, ``β > 1``
  a flatter top and a sharper fall-off;
* plateau: ``1 / (1 + q^β)``;
* sinc: ``ωc · J1(ωc · r) / (2π · r)`` with ``r`` the distance from the centre and ``ωc`` the cutoff
  in radians per sample (``π`` is the Nyquist frequency); the centre value is the limit ``ωc² / (4π)``.

Kernels are built in float64 on the CPU (they are tiny) and moved to the data's device and dtype where
they are applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cassr_cli.errors import ConfigError

KernelType = Literal["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
KERNEL_TYPES: tuple[KernelType, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
SINC = "sinc"
"""Name recorded in :attr:`KernelBatch.kinds` for a sample whose blur kernel is a sinc filter."""


# Validation helpers shared by the degradation config dataclasses; each raises ConfigError naming the field.


def check_range(name: str, value: tuple[float, float], *, low: float = -math.inf) -> None:
    if len(value) != 2 or not (low <= value[0] <= value[1]):
        raise ConfigError(f"invalid {name} = {value!r}: expected (min, max) with {low} <= min <= max")


def check_probs(name: str, probs: tuple[float, ...], count: int) -> None:
    if len(probs) != count or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
        raise ConfigError(f"invalid {name} = {probs!r}: expected {count} non-negative numbers summing to 1")


def check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"invalid {name} = {value!r}: expected a probability in [0, 1]")


def check_odd_sizes(name: str, sizes: tuple[int, ...]) -> None:
    if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
        raise ConfigError(f"invalid {name} = {sizes!r}: expected a non-empty list of odd sizes >= 1")


@dataclass(frozen=True)
class KernelConfig:
    """How one degradation stage samples its blur kernel, per image. Defaults: Real-ESRGAN's first stage.

    Attributes:
        kernel_sizes: odd kernel sizes, one drawn uniformly per image. Default ``(7, 9, …, 21)``, Real-ESRGAN's
            ``kernel_range = [2 * v + 1 for v in range(3, 11)]``. Kernels are zero-padded to the largest.
        kernel_types: the non-sinc families to choose from. Default: all six of :data:`KERNEL_TYPES`.
        kernel_probs: probability of each entry of ``kernel_types``. Default ``(0.45, 0.25, 0.12, 0.03, 0.12,
            0.03)`` (``kernel_prob``).
        sigma_range: standard deviation ``σx`` (and ``σy`` for anisotropic kernels) in pixels, drawn uniformly.
            Default ``(0.2, 3.0)`` (``blur_sigma``; the second stage uses ``(0.2, 1.5)``).
        rotation_range: angle ``θ`` of anisotropic kernels in radians, drawn uniformly. Default ``(-π, π)``,
            hard-coded in ``RealESRGANDataset``.
        betag_range: shape ``β`` of generalized Gaussians. Default ``(0.5, 4.0)`` (``betag_range``).
        betap_range: shape ``β`` of plateau kernels. Default ``(1.0, 2.0)`` (``betap_range``).
            For both β ranges, as in BasicSR, ``β`` is drawn from ``U(min, 1)`` or ``U(1, max)`` with equal
            probability, so with ``(1, 2)`` half of the plateau kernels get ``β = 1`` exactly (BasicSR marks
            this sampling "TODO: this may be not proper"; we keep it for fidelity).
        sinc_prob: probability that the image's kernel is a sinc filter instead. Default ``0.1``
            (``sinc_prob``, and ``sinc_prob2`` for the second stage).
        sinc_cutoff_small: cutoff ``ωc`` (radians per sample) drawn uniformly for sinc kernels smaller than
            ``sinc_large_size``. Default ``(π/3, π)``.
        sinc_cutoff_large: the same for sinc kernels of size ``>= sinc_large_size``. Default ``(π/5, π)``.
        sinc_large_size: default ``13``. These three values are hard-coded in ``RealESRGANDataset`` ("this
            sinc filter setting is for kernels ranging from [7, 21]"), not options of its YAML.
    """

    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_types: tuple[KernelType, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma_range: tuple[float, float] = (0.2, 3.0)
    rotation_range: tuple[float, float] = (-math.pi, math.pi)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    sinc_cutoff_small: tuple[float, float] = (math.pi / 3, math.pi)
    sinc_cutoff_large: tuple[float, float] = (math.pi / 5, math.pi)
    sinc_large_size: int = 13

    def __post_init__(self) -> None:
        check_odd_sizes("kernel_sizes", self.kernel_sizes)
        unknown = [t for t in self.kernel_types if t not in KERNEL_TYPES]
        if unknown or not self.kernel_types:
            raise ConfigError(
                f"invalid kernel_types = {self.kernel_types!r}: expected a non-empty subset of {KERNEL_TYPES}"
            )
        check_probs("kernel_probs", self.kernel_probs, len(self.kernel_types))
        check_range("sigma_range", self.sigma_range, low=1e-6)
        check_range("rotation_range", self.rotation_range)
        check_range("betag_range", self.betag_range, low=1e-6)
        check_range("betap_range", self.betap_range, low=1e-6)
        for name in ("betag_range", "betap_range"):
            lo, hi = getattr(self, name)
            if not lo <= 1.0 <= hi:
                raise ConfigError(
                    f"invalid {name} = {(lo, hi)!r}: the range must contain 1 (β = 1 is the Gaussian)"
                )
        check_prob("sinc_prob", self.sinc_prob)
        check_range("sinc_cutoff_small", self.sinc_cutoff_small, low=1e-6)
        check_range("sinc_cutoff_large", self.sinc_cutoff_large, low=1e-6)


@dataclass(frozen=True)
class KernelBatch:
    """Per-image blur kernels of one batch.

    Attributes:
        kernels: ``[B, K, K]`` float64 on the CPU, each summing to 1, zero outside its centred support.
        sizes: ``[B]`` int64, the odd support size of each kernel.
        kinds: the family of each kernel: one of :data:`KERNEL_TYPES` or ``"sinc"``.
    """

    kernels: torch.Tensor
    sizes: torch.Tensor
    kinds: tuple[str, ...]


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred integer coordinates ``(y, x)``, each ``[size, size]`` float64 (``size`` odd)."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return yy, xx


def _support_mask(sizes: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size, size]`` bool: inside each sample's centred ``sizes[b] × sizes[b]`` square."""
    yy, xx = _grid(size)
    half = (sizes.to(torch.float64) // 2).view(-1, 1, 1)
    return (yy.abs() <= half) & (xx.abs() <= half)


def _normalize(kernels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    kernels = torch.where(mask, kernels, torch.zeros_like(kernels))
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def _as_batch(value: torch.Tensor | float, batch: int) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64).reshape(-1).expand(batch).reshape(batch, 1, 1)


def _mahalanobis_sq(
    size: int, sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """``q = [x y] Σ⁻¹ [x y]ᵀ`` on the ``size × size`` grid, ``[B, size, size]`` float64.

    ``Σ = U diag(σx², σy²) Uᵀ`` with ``U`` the rotation by ``θ`` (BasicSR's ``sigma_matrix2``); ``x`` is the
    column offset and ``y`` the row offset from the centre, as in BasicSR's ``mesh_grid``.
    """
    yy, xx = _grid(size)
    cos, sin = torch.cos(theta), torch.sin(theta)
    inv_x, inv_y = 1.0 / sigma_x**2, 1.0 / sigma_y**2
    a = cos**2 * inv_x + sin**2 * inv_y
    b = cos * sin * (inv_x - inv_y)
    c = sin**2 * inv_x + cos**2 * inv_y
    return a * xx**2 + 2 * b * xx * yy + c * yy**2


def gaussian_kernels(
    sizes: torch.Tensor,
    sigma_x: torch.Tensor | float,
    sigma_y: torch.Tensor | float,
    theta: torch.Tensor | float,
    *,
    grid_size: int | None = None,
) -> torch.Tensor:
    """Bivariate Gaussian kernels ``exp(-q / 2)``, normalised over each support.

    Args:
        sizes: ``[B]`` odd support sizes.
        sigma_x, sigma_y: ``[B]`` (or scalars) standard deviations in pixels, > 0. Equal and ``theta = 0``
            gives the isotropic kernel.
        theta: ``[B]`` (or scalar) rotation in radians.
        grid_size: odd side of the returned grid, at least ``max(sizes)`` (default ``max(sizes)``).

    Returns:
        ``[B, grid_size, grid_size]`` float64 CPU, each kernel summing to 1.
    """
    size, b = _grid_size(sizes, grid_size), sizes.numel()
    q = _mahalanobis_sq(size, _as_batch(sigma_x, b), _as_batch(sigma_y, b), _as_batch(theta, b))
    return _normalize(torch.exp(-0.5 * q), _support_mask(sizes, size))


def generalized_gaussian_kernels(
    sizes: torch.Tensor,
    sigma_x: torch.Tensor | float,
    sigma_y: torch.Tensor | float,
    theta: torch.Tensor | float,
    beta: torch.Tensor | float,
    *,
    grid_size: int | None = None,
) -> torch.Tensor:
    """Generalized Gaussian kernels ``exp(-q^β / 2)`` (arguments as :func:`gaussian_kernels`, ``beta [B] > 0``)."""
    size, b = _grid_size(sizes, grid_size), sizes.numel()
    q = _mahalanobis_sq(size, _as_batch(sigma_x, b), _as_batch(sigma_y, b), _as_batch(theta, b))
    return _normalize(torch.exp(-0.5 * q.pow(_as_batch(beta, b))), _support_mask(sizes, size))


def plateau_kernels(
    sizes: torch.Tensor,
    sigma_x: torch.Tensor | float,
    sigma_y: torch.Tensor | float,
    theta: torch.Tensor | float,
    beta: torch.Tensor | float,
    *,
    grid_size: int | None = None,
) -> torch.Tensor:
    """Plateau kernels ``1 / (1 + q^β)`` (arguments as :func:`gaussian_kernels`, ``beta [B] > 0``)."""
    size, b = _grid_size(sizes, grid_size), sizes.numel()
    q = _mahalanobis_sq(size, _as_batch(sigma_x, b), _as_batch(sigma_y, b), _as_batch(theta, b))
    return _normalize(1.0 / (1.0 + q.pow(_as_batch(beta, b))), _support_mask(sizes, size))


def sinc_kernels(
    sizes: torch.Tensor, cutoff: torch.Tensor | float, *, grid_size: int | None = None
) -> torch.Tensor:
    """Circularly symmetric 2-D sinc (ideal low-pass) kernels, BasicSR's ``circular_lowpass_kernel``.

    Args:
        sizes: ``[B]`` odd support sizes.
        cutoff: ``[B]`` (or scalar) cutoff ``ωc`` in radians per sample, in ``(0, π]``.
        grid_size: odd side of the returned grid, at least ``max(sizes)`` (default ``max(sizes)``).

    Returns:
        ``[B, grid_size, grid_size]`` float64 CPU, each summing to 1 (the truncated kernel has small negative
        side lobes, so values are not all positive).
    """
    size, b = _grid_size(sizes, grid_size), sizes.numel()
    yy, xx = _grid(size)
    r = torch.sqrt(xx**2 + yy**2)
    wc = _as_batch(cutoff, b)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    kernels = wc * torch.special.bessel_j1(wc * safe_r) / (2 * math.pi * safe_r)
    kernels = torch.where(r > 0, kernels, wc**2 / (4 * math.pi))
    return _normalize(kernels, _support_mask(sizes, size))


def sinc_kernel(cutoff: float, size: int, *, pad_to: int = 0) -> torch.Tensor:
    """One sinc kernel ``[max(size, pad_to)]²`` float64 CPU summing to 1 (see :func:`sinc_kernels`)."""
    return sinc_kernels(torch.tensor([size]), cutoff, grid_size=max(size, pad_to))[0]


def pulse_kernels(batch: int, size: int) -> torch.Tensor:
    """Identity kernels ``[batch, size, size]`` float64 CPU: 1 at the centre, 0 elsewhere (no blur)."""
    kernels = torch.zeros(batch, size, size, dtype=torch.float64)
    kernels[:, size // 2, size // 2] = 1.0
    return kernels


def _grid_size(sizes: torch.Tensor, grid_size: int | None) -> int:
    largest = int(sizes.max())
    size = largest if grid_size is None else grid_size
    if size % 2 == 0 or size < largest or bool((sizes % 2 == 0).any()):
        raise ValueError(
            f"kernel sizes must be odd and fit the grid: sizes={sizes.tolist()}, grid_size={grid_size}"
        )
    return size


def uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``[batch]`` float64 CPU values drawn uniformly in ``[low, high)`` from ``generator`` (on any device)."""
    u = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    return low + (high - low) * u


def choose(batch: int, probs: tuple[float, ...], generator: torch.Generator) -> torch.Tensor:
    """``[batch]`` int64 CPU indices into ``probs``, drawn independently with those probabilities."""
    u = uniform(batch, 0.0, 1.0, generator)
    edges = torch.tensor(probs, dtype=torch.float64).cumsum(0)
    return torch.searchsorted(edges[:-1], u, right=True)


def choose_uniform(batch: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch]`` int64 CPU indices in ``[0, count)``, each equally likely."""
    return choose(batch, (1.0 / count,) * count, generator)


def random_kernels(batch: int, config: KernelConfig, generator: torch.Generator) -> KernelBatch:
    """Draw one blur kernel per image, Real-ESRGAN's ``random_mixed_kernels`` / sinc choice, batched.

    Per image: a size from ``config.kernel_sizes``; with ``config.sinc_prob`` a sinc kernel (cutoff range by
    size); otherwise a family from ``kernel_types`` with ``kernel_probs`` and its σx, σy, θ, β.
    The number of draws does not depend on the outcomes, so the generator advances the same amount for
    every batch of the same size.

    Args:
        batch: number of kernels ``B``.
        config: the sampling options.
        generator: the only source of randomness (any device; values are copied to the CPU).

    Returns:
        A :class:`KernelBatch` with ``[B, K, K]`` kernels, ``K = max(config.kernel_sizes)``.
    """
    size = max(config.kernel_sizes)
    sizes = torch.tensor(config.kernel_sizes, dtype=torch.int64)[
        choose_uniform(batch, len(config.kernel_sizes), generator)
    ]
    is_sinc = uniform(batch, 0.0, 1.0, generator) < config.sinc_prob
    kind_index = choose(batch, config.kernel_probs, generator)
    sigma_x = uniform(batch, *config.sigma_range, generator)
    sigma_y = uniform(batch, *config.sigma_range, generator)
    theta = uniform(batch, *config.rotation_range, generator)
    beta_low = uniform(batch, 0.0, 1.0, generator) < 0.5
    beta_u = uniform(batch, 0.0, 1.0, generator)
    cutoff_u = uniform(batch, 0.0, 1.0, generator)

    types = [config.kernel_types[int(i)] for i in kind_index]
    isotropic = torch.tensor([not t.endswith("aniso") for t in types], dtype=torch.bool)
    sigma_y = torch.where(isotropic, sigma_x, sigma_y)
    theta = torch.where(isotropic, torch.zeros_like(theta), theta)

    def beta_for(low: float, high: float) -> torch.Tensor:
        return torch.where(beta_low, low + (1.0 - low) * beta_u, 1.0 + (high - 1.0) * beta_u)

    family = [t.split("_")[0] for t in types]
    gaussian = gaussian_kernels(sizes, sigma_x, sigma_y, theta, grid_size=size)
    generalized = generalized_gaussian_kernels(
        sizes, sigma_x, sigma_y, theta, beta_for(*config.betag_range), grid_size=size
    )
    plateau = plateau_kernels(sizes, sigma_x, sigma_y, theta, beta_for(*config.betap_range), grid_size=size)
    large = sizes >= config.sinc_large_size
    lo, hi = (
        torch.where(large, torch.tensor(big, dtype=torch.float64), torch.tensor(small, dtype=torch.float64))
        for big, small in zip(config.sinc_cutoff_large, config.sinc_cutoff_small, strict=True)
    )
    sinc = sinc_kernels(sizes, lo + (hi - lo) * cutoff_u, grid_size=size)

    pick = {"iso": gaussian, "aniso": gaussian, "generalized": generalized, "plateau": plateau}
    kernels = torch.stack([sinc[i] if is_sinc[i] else pick[family[i]][i] for i in range(batch)])
    kinds = tuple(SINC if is_sinc[i] else types[i] for i in range(batch))
    return KernelBatch(kernels=kernels, sizes=sizes, kinds=kinds)


def random_sinc_kernels(
    batch: int,
    *,
    prob: float,
    kernel_sizes: tuple[int, ...],
    cutoff_range: tuple[float, float],
    generator: torch.Generator,
) -> KernelBatch:
    """Real-ESRGAN's final sinc filter, per image: with ``prob`` a sinc kernel (size from ``kernel_sizes``,
    cutoff uniform in ``cutoff_range``), otherwise the identity (:func:`pulse_kernels`).

    Returns:
        A :class:`KernelBatch` of ``[B, K, K]`` kernels, ``K = max(kernel_sizes)``; identity kernels have
        size 1 and kind ``"pulse"``.
    """
    size = max(kernel_sizes)
    sizes = torch.tensor(kernel_sizes, dtype=torch.int64)[choose_uniform(batch, len(kernel_sizes), generator)]
    is_sinc = uniform(batch, 0.0, 1.0, generator) < prob
    cutoff = uniform(batch, *cutoff_range, generator)
    kernels = torch.where(
        is_sinc.view(-1, 1, 1), sinc_kernels(sizes, cutoff, grid_size=size), pulse_kernels(batch, size)
    )
    sizes = torch.where(is_sinc, sizes, torch.ones_like(sizes))
    return KernelBatch(kernels=kernels, sizes=sizes, kinds=tuple(SINC if s else "pulse" for s in is_sinc))
