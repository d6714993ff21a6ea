"""Blur kernels: normalisation, supports, closed forms, symmetry, low-pass behaviour, sampling."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from cassr_cli.errors import ConfigError
from cassr_cli.training.degradations import apply_blur
from cassr_cli.training.kernels import (
    KERNEL_TYPES,
    KernelConfig,
    gaussian_kernels,
    generalized_gaussian_kernels,
    plateau_kernels,
    pulse_kernels,
    random_kernels,
    random_sinc_kernels,
    sinc_kernel,
    sinc_kernels,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    return torch.meshgrid(ax, ax, indexing="ij")


def _bessel_j1(x: torch.Tensor) -> torch.Tensor:
    """Independent J1: Bessel's integral (1/π) ∫_0^π cos(τ − x sin τ) dτ, midpoint rule with 4000 nodes."""
    tau = (torch.arange(4000, dtype=torch.float64) + 0.5) * math.pi / 4000
    return torch.cos(tau - x.unsqueeze(-1) * torch.sin(tau)).mean(-1)


def test_isotropic_gaussian_matches_closed_form():
    yy, xx = _grid(15)
    expected = torch.exp(-(xx**2 + yy**2) / (2 * 1.7**2))
    expected /= expected.sum()
    got = gaussian_kernels(torch.tensor([15]), 1.7, 1.7, 0.0)[0]
    assert torch.allclose(got, expected, atol=1e-15)


def test_anisotropic_gaussian_axes_and_rotation():
    sizes = torch.tensor([21])
    yy, xx = _grid(21)
    expected = torch.exp(-(xx**2) / (2 * 3.0**2) - yy**2 / (2 * 0.8**2))
    expected /= expected.sum()
    assert torch.allclose(gaussian_kernels(sizes, 3.0, 0.8, 0.0)[0], expected, atol=1e-15)
    # A quarter turn swaps the axes: the kernel becomes the transpose.
    turned = gaussian_kernels(sizes, 3.0, 0.8, math.pi / 2)[0]
    assert torch.allclose(turned, expected.T, atol=1e-12)


def test_shaped_kernels_reduce_to_gaussian_at_beta_one_and_have_their_profiles():
    sizes = torch.tensor([21])
    gauss = gaussian_kernels(sizes, 2.0, 1.0, 0.4)
    assert torch.allclose(generalized_gaussian_kernels(sizes, 2.0, 1.0, 0.4, 1.0), gauss, atol=1e-15)
    yy, xx = _grid(21)
    q = (xx**2 + yy**2) / 2.0**2
    plateau = plateau_kernels(sizes, 2.0, 2.0, 0.0, 1.5)[0]
    expected = 1 / (1 + q**1.5)
    assert torch.allclose(plateau, expected / expected.sum(), atol=1e-15)
    generalized = generalized_gaussian_kernels(sizes, 2.0, 2.0, 0.0, 3.0)[0]
    expected = torch.exp(-0.5 * q**3.0)
    assert torch.allclose(generalized, expected / expected.sum(), atol=1e-15)


def test_sinc_kernel_matches_bessel_formula_and_sums_to_one():
    cutoff, size = 1.1, 13
    yy, xx = _grid(size)
    r = torch.sqrt(xx**2 + yy**2)
    expected = cutoff * _bessel_j1(cutoff * r) / (2 * math.pi * torch.where(r > 0, r, torch.ones_like(r)))
    expected[size // 2, size // 2] = cutoff**2 / (4 * math.pi)
    expected /= expected.sum()
    got = sinc_kernel(cutoff, size)
    assert got.shape == (size, size)
    assert torch.allclose(got, expected, atol=1e-12)
    assert math.isclose(float(got.sum()), 1.0, abs_tol=1e-12)
    padded = sinc_kernel(cutoff, size, pad_to=21)
    assert padded.shape == (21, 21) and torch.allclose(padded[4:17, 4:17], got, atol=1e-15)


def test_sinc_kernel_is_low_pass():
    """Cutoff π/3, 21 taps: a sine at 0.8π (above the cutoff) keeps ~3 % of its amplitude, one at 0.1π ~105 %."""
    kernel = sinc_kernel(math.pi / 3, 21)
    _, xx = _grid(64)

    def gain(omega: float) -> float:
        image = (0.5 + 0.25 * torch.sin(omega * (xx + 32))).expand(1, 3, 64, 64)
        out = apply_blur(image, kernel)
        inner = (slice(16, 48), slice(16, 48))
        return float(
            (out[..., inner[0], inner[1]] - 0.5).std() / (image[..., inner[0], inner[1]] - 0.5).std()
        )

    assert gain(0.8 * math.pi) < 0.1
    assert gain(0.9 * math.pi) < 0.1
    assert 0.8 < gain(0.1 * math.pi) < 1.25


def test_sinc_kernels_batched_equal_single():
    sizes = torch.tensor([7, 21, 13])
    cutoffs = torch.tensor([1.0, 0.7, 2.5], dtype=torch.float64)
    batch = sinc_kernels(sizes, cutoffs, grid_size=21)
    for i in range(3):
        assert torch.allclose(batch[i], sinc_kernel(float(cutoffs[i]), int(sizes[i]), pad_to=21), atol=1e-15)


def test_random_kernels_normalised_finite_and_inside_their_odd_support():
    config = KernelConfig()
    batch = random_kernels(512, config, _gen(1))
    kernels, sizes = batch.kernels, batch.sizes
    assert kernels.shape == (512, 21, 21) and kernels.dtype == torch.float64
    assert torch.isfinite(kernels).all()
    assert torch.allclose(kernels.sum(dim=(-2, -1)), torch.ones(512, dtype=torch.float64), atol=1e-12)
    assert set(sizes.tolist()) <= set(config.kernel_sizes)
    assert all(s % 2 == 1 for s in sizes.tolist())
    yy, xx = _grid(21)
    for kernel, size in zip(kernels, sizes.tolist(), strict=True):
        outside = (yy.abs() > size // 2) | (xx.abs() > size // 2)
        assert torch.all(kernel[outside] == 0)
    for kernel, kind in zip(kernels, batch.kinds, strict=True):
        if kind != "sinc":
            assert torch.all(kernel >= 0)
            # Gaussian-type kernels are centrally symmetric: q(-x, -y) = q(x, y).
            assert torch.allclose(kernel, torch.flip(kernel, dims=(0, 1)), atol=1e-15)
        if kind in ("iso", "generalized_iso", "plateau_iso"):
            assert torch.allclose(kernel, kernel.T, atol=1e-15)


def test_random_kernels_follow_the_configured_probabilities():
    kinds = Counter(random_kernels(4000, KernelConfig(), _gen(2)).kinds)
    assert abs(kinds["sinc"] / 4000 - 0.1) < 0.02
    assert abs(kinds["iso"] / 4000 - 0.9 * 0.45) < 0.03
    assert abs(kinds["aniso"] / 4000 - 0.9 * 0.25) < 0.03
    assert set(kinds) <= set(KERNEL_TYPES) | {"sinc"}


@pytest.mark.parametrize("kind", KERNEL_TYPES)
def test_each_kernel_family_can_be_forced(kind):
    config = KernelConfig(kernel_types=(kind,), kernel_probs=(1.0,), sinc_prob=0.0, kernel_sizes=(9, 11))
    batch = random_kernels(16, config, _gen(3))
    assert batch.kinds == (kind,) * 16
    assert batch.kernels.shape == (16, 11, 11)
    assert set(batch.sizes.tolist()) <= {9, 11}
    assert torch.allclose(batch.kernels.sum(dim=(-2, -1)), torch.ones(16, dtype=torch.float64), atol=1e-12)


def test_random_kernels_deterministic_under_a_seed():
    a = random_kernels(32, KernelConfig(), _gen(7))
    b = random_kernels(32, KernelConfig(), _gen(7))
    c = random_kernels(32, KernelConfig(), _gen(8))
    assert torch.equal(a.kernels, b.kernels) and a.kinds == b.kinds
    assert not torch.equal(a.kernels, c.kernels)


def test_final_sinc_kernels_are_sinc_or_identity():
    batch = random_sinc_kernels(
        400, prob=0.8, kernel_sizes=(7, 9, 21), cutoff_range=(math.pi / 3, math.pi), generator=_gen(4)
    )
    assert batch.kernels.shape == (400, 21, 21)
    pulse = pulse_kernels(1, 21)[0]
    for kernel, kind, size in zip(batch.kernels, batch.kinds, batch.sizes.tolist(), strict=True):
        if kind == "pulse":
            assert torch.equal(kernel, pulse) and size == 1
        else:
            assert size in (7, 9, 21)
            assert math.isclose(float(kernel.sum()), 1.0, abs_tol=1e-12)
    assert abs(batch.kinds.count("sinc") / 400 - 0.8) < 0.06


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_sizes": (8,)},
        {"kernel_sizes": ()},
        {"kernel_types": ("iso", "box"), "kernel_probs": (0.5, 0.5)},
        {"kernel_probs": (0.5, 0.5)},
        {"sigma_range": (3.0, 0.2)},
        {"betag_range": (1.5, 4.0)},
        {"sinc_prob": 1.5},
    ],
)
def test_kernel_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        KernelConfig(**kwargs)
