"""The second-order degradation pipeline: defaults, shapes, ranges, determinism, and each stage's effect."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cassr_cli.errors import ConfigError
from cassr_cli.training.degradations import (
    DegradationConfig,
    DegradationPipeline,
    DegradationStage,
    FinalStage,
    KernelConfig,
    add_gaussian_noise,
    add_poisson_noise,
    apply_blur,
    apply_stage,
    degrade,
    random_kernels,
    random_noise,
    random_resize,
)
from cassr_cli.training.kernels import (
    gaussian_kernels,
    generalized_gaussian_kernels,
    plateau_kernels,
    pulse_kernels,
    sinc_kernels,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _texture(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Uniform noise texture in [0.2, 0.8]: lots of high-frequency energy."""
    return torch.rand(batch, 3, size, size, generator=_gen(seed)) * 0.6 + 0.2


def _smooth(batch: int = 2, size: int = 64) -> torch.Tensor:
    """Smooth colour ramp, channels at different levels, values in [0.3, 0.7]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    ramp = 0.1 * (xx + yy)
    return torch.stack([0.3 + ramp, 0.4 + ramp, 0.5 + ramp]).expand(batch, -1, -1, -1).clone()


def _hf_energy(x: torch.Tensor) -> float:
    """Mean squared Laplacian (valid region), a high-frequency energy measure."""
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype).view(1, 1, 3, 3)
    return float(F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), lap).pow(2).mean())


# --- config ---------------------------------------------------------------------------------------------


def test_defaults_are_realesrgan_x4plus():
    """The values of options/train_realesrgan_x4plus.yml and the constants of RealESRGANDataset."""
    config = DegradationConfig()
    first, second, final = config.first, config.second, config.final
    assert config.scale == 4
    for stage in (first, second):
        kernel = stage.kernel
        assert kernel.kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21)
        assert kernel.kernel_types == (
            "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"
        )  # fmt: skip
        assert kernel.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
        assert kernel.sinc_prob == 0.1
        assert kernel.betag_range == (0.5, 4.0) and kernel.betap_range == (1.0, 2.0)
        assert kernel.rotation_range == (-math.pi, math.pi)
        assert kernel.sinc_cutoff_small == (math.pi / 3, math.pi)
        assert kernel.sinc_cutoff_large == (math.pi / 5, math.pi) and kernel.sinc_large_size == 13
        assert stage.gaussian_noise_prob == 0.5 and stage.gray_noise_prob == 0.4
        assert stage.jpeg_range == (30, 95)
        assert stage.resize_modes == ("area", "bilinear", "bicubic")
    assert first.blur_prob == 1.0 and second.blur_prob == 0.8
    assert first.kernel.sigma_range == (0.2, 3.0) and second.kernel.sigma_range == (0.2, 1.5)
    assert first.resize_probs == (0.2, 0.7, 0.1) and second.resize_probs == (0.3, 0.4, 0.3)
    assert first.resize_range == (0.15, 1.5) and second.resize_range == (0.3, 1.2)
    assert first.noise_range == (1.0, 30.0) and second.noise_range == (1.0, 25.0)
    assert first.poisson_scale_range == (0.05, 3.0) and second.poisson_scale_range == (0.05, 2.5)
    assert final.sinc_prob == 0.8 and final.sinc_cutoff_range == (math.pi / 3, math.pi)
    assert final.sinc_kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21) and final.sinc_first_prob == 0.5


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DegradationConfig().scale = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "build",
    [
        lambda: DegradationConfig(scale=0),
        lambda: DegradationStage(resize_probs=(0.5, 0.5, 0.5)),
        lambda: DegradationStage(resize_range=(1.2, 1.5)),
        lambda: DegradationStage(jpeg_range=(95, 30)),
        lambda: DegradationStage(jpeg_range=(0, 95)),
        lambda: DegradationStage(gray_noise_prob=-0.1),
        lambda: DegradationStage(resize_modes=("nearest",)),  # type: ignore[arg-type]
        lambda: FinalStage(sinc_kernel_sizes=(6,)),
        lambda: FinalStage(sinc_first_prob=2.0),
    ],
)
def test_config_rejects_bad_values(build):
    with pytest.raises(ConfigError):
        build()


# --- the whole pipeline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,height,width,scale",
    [(1, 64, 64, 4), (2, 48, 80, 4), (3, 36, 52, 4), (4, 100, 60, 4), (2, 34, 50, 2)],
)
def test_output_shape_range_dtype_device(batch, height, width, scale):
    hr = torch.rand(batch, 3, height, width, generator=_gen(batch))
    lr = degrade(hr, DegradationConfig(scale=scale), _gen(0))
    assert lr.shape == (batch, 3, height // scale, width // scale)
    assert lr.dtype == hr.dtype and lr.device == hr.device
    assert torch.all((lr >= 0) & (lr <= 1))
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4)  # on the 8-bit grid


def test_other_float_dtypes():
    hr = torch.rand(2, 3, 32, 32, generator=_gen(1))
    for dtype in (torch.float64, torch.bfloat16):
        lr = degrade(hr.to(dtype), DegradationConfig(), _gen(0))
        assert lr.dtype == dtype and lr.shape == (2, 3, 8, 8)


@pytest.mark.parametrize(
    "shape", [(2, 3, 30, 32), (2, 3, 32, 30), (2, 1, 32, 32), (3, 32, 32), (0, 3, 32, 32)]
)
def test_rejects_bad_inputs(shape):
    with pytest.raises(ValueError):
        degrade(torch.rand(shape), DegradationConfig(), _gen(0))


def test_same_seed_same_output_different_seed_different_output():
    hr = _texture(3, 48)
    pipeline = DegradationPipeline()
    a = pipeline(hr, _gen(123))
    b = pipeline(hr, _gen(123))
    c = pipeline(hr, _gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_uses_only_the_given_generator_and_leaves_input_alone():
    hr = _texture(2, 32)
    before = hr.clone()
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    a = degrade(hr, DegradationConfig(), _gen(5))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state, strict=True))
    torch.manual_seed(999)  # a different global state changes nothing
    assert torch.equal(degrade(hr, DegradationConfig(), _gen(5)), a)
    assert torch.equal(hr, before)


def test_parameters_are_drawn_per_image():
    """Identical images in one batch come out different (own kernels, noise, qualities)."""
    lr = degrade(_texture(1, 48).expand(4, -1, -1, -1), DegradationConfig(), _gen(3))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(lr[i], lr[j])


@pytest.mark.parametrize("sinc_first_prob", [0.0, 1.0])
def test_both_final_orders(sinc_first_prob):
    config = DegradationConfig(final=FinalStage(sinc_first_prob=sinc_first_prob, sinc_prob=1.0))
    lr = degrade(_texture(2, 32), config, _gen(4))
    assert lr.shape == (2, 3, 8, 8) and torch.all((lr >= 0) & (lr <= 1))


def test_final_order_matters():
    hr = _texture(2, 32)
    configs = [DegradationConfig(final=FinalStage(sinc_first_prob=p, sinc_prob=1.0)) for p in (0.0, 1.0)]
    assert not torch.equal(degrade(hr, configs[0], _gen(4)), degrade(hr, configs[1], _gen(4)))


def test_degraded_output_is_blurrier_than_a_plain_downscale():
    """Averaged over seeds, the synthetic LR has less high-frequency energy than an area-downscaled texture
    of the same HR (blur + sinc dominate the added noise)."""
    hr = _texture(4, 64)
    plain = _hf_energy(F.interpolate(hr, size=(16, 16), mode="area"))
    degraded = np.mean([_hf_energy(degrade(hr, DegradationConfig(), _gen(s))) for s in range(4)])
    assert degraded < plain


# --- individual stages: each moves the image in the expected direction ------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s: gaussian_kernels(s, 1.5, 1.5, 0.0),
        lambda s: gaussian_kernels(s, 2.0, 0.6, 0.5),
        lambda s: generalized_gaussian_kernels(s, 1.5, 1.0, 0.3, 2.0),
        lambda s: plateau_kernels(s, 1.5, 1.0, 0.3, 1.5),
        lambda s: sinc_kernels(s, math.pi / 3),
    ],
    ids=["iso", "aniso", "generalized", "plateau", "sinc"],
)
def test_blur_lowers_high_frequency_energy(make):
    """Measured ratios after/before: iso 0.0006, aniso 0.010, generalized 0.016, plateau 0.002, sinc 0.0015."""
    texture = _texture()
    kernels = make(torch.tensor([21, 21]))
    assert _hf_energy(apply_blur(texture, kernels)) < 0.05 * _hf_energy(texture)


def test_random_blur_lowers_high_frequency_energy_per_image():
    texture = _texture(32, 32)
    kernels = random_kernels(32, KernelConfig(sinc_prob=0.0), _gen(6)).kernels
    blurred = apply_blur(texture, kernels)
    for before, after in zip(texture, blurred, strict=True):
        assert _hf_energy(after[None]) < _hf_energy(before[None])


def test_pulse_kernel_is_identity_and_small_images_are_handled():
    texture = _texture(2, 16)
    assert torch.allclose(apply_blur(texture, pulse_kernels(2, 21)), texture, atol=1e-6)
    tiny = _texture(2, 4)  # smaller than the 10-pixel reflection pad: replicate padding
    out = apply_blur(tiny, gaussian_kernels(torch.tensor([21, 21]), 2.0, 2.0, 0.0))
    assert out.shape == tiny.shape and torch.isfinite(out).all()


def test_gaussian_noise_raises_high_frequency_energy_with_the_right_level():
    smooth = _smooth(2, 64)
    noisy = add_gaussian_noise(smooth, torch.tensor([10.0, 20.0]), torch.tensor([False, False]), _gen(1))
    assert _hf_energy(noisy) > 1000 * _hf_energy(smooth)
    for i, sigma in enumerate((10.0, 20.0)):
        measured = float((noisy[i] - smooth[i]).std() * 255)
        assert abs(measured - sigma) < 0.05 * sigma


def test_gray_noise_is_identical_on_the_three_channels():
    smooth = _smooth(2, 64)
    gray = torch.tensor([True, False])
    for noisy in (
        add_gaussian_noise(smooth, torch.tensor([8.0, 8.0]), gray, _gen(2)),
        add_poisson_noise(smooth, torch.tensor([0.5, 0.5]), gray, _gen(2)),
    ):
        delta = noisy - smooth
        assert float(delta[0].abs().max()) > 0
        assert torch.allclose(delta[0, 0], delta[0, 1], atol=1e-6)
        assert torch.allclose(delta[0, 0], delta[0, 2], atol=1e-6)
        assert not torch.allclose(delta[1, 0], delta[1, 1], atol=1e-3)


def test_poisson_noise_raises_high_frequency_energy_and_scales():
    smooth = _smooth(2, 64)
    noisy = add_poisson_noise(smooth, torch.tensor([1.0, 2.0]), torch.tensor([False, False]), _gen(3))
    assert _hf_energy(noisy) > 1000 * _hf_energy(smooth)
    std = [float((noisy[i] - smooth[i]).std()) for i in range(2)]
    assert 1.6 < std[1] / std[0] < 2.4  # noise amplitude follows the scale


def test_random_noise_raises_energy_for_every_image():
    smooth = _smooth(16, 32)
    noisy = random_noise(smooth, DegradationStage(), _gen(4))
    for before, after in zip(smooth, noisy, strict=True):
        assert _hf_energy(after[None]) > 10 * _hf_energy(before[None])
    assert torch.all((noisy >= 0) & (noisy <= 1))


def test_random_resize_stays_in_range():
    x = _texture(1, 40)
    seen = set()
    for seed in range(40):
        out = random_resize(
            x, (40, 40), probs=(0.2, 0.7, 0.1), scale_range=(0.15, 1.5),
            modes=("area", "bilinear", "bicubic"), generator=_gen(seed),
        )  # fmt: skip
        assert out.shape[:2] == (1, 3) and out.shape[-2] == out.shape[-1]
        assert int(40 * 0.15) <= out.shape[-1] <= int(40 * 1.5)
        seen.add("up" if out.shape[-1] > 40 else "down" if out.shape[-1] < 40 else "keep")
    assert seen == {"up", "down", "keep"}


def test_apply_stage_without_jpeg_skips_it():
    """With blur and resize turned into no-ops and zero-level noise, the stage is JPEG or nothing."""
    stage = DegradationStage(
        blur_prob=0.0, resize_probs=(0.0, 0.0, 1.0), noise_range=(0.0, 0.0), gaussian_noise_prob=1.0,
        jpeg_range=(10, 10),
    )  # fmt: skip
    x = F.interpolate(_smooth(2, 32), size=(32, 32))
    x = (x * 255).round() / 255
    assert torch.allclose(
        apply_stage(x, stage, resize_base=(32, 32), generator=_gen(0), jpeg=False), x, atol=1e-6
    )
    compressed = apply_stage(x, stage, resize_base=(32, 32), generator=_gen(0))
    assert float((compressed - x).abs().max()) > 2 / 255


# --- a real photo ---------------------------------------------------------------------------------------


@pytest.mark.shared
def test_astronaut_degrades_to_a_plausible_lr_image():
    """Mean colour within 0.03 of the bicubic LR (measured ≤ 0.013 over 8 seeds), structure kept
    (correlation with the bicubic LR > 0.7), and visibly degraded (mean abs difference > 0.01)."""
    path = SHARED / "testdata" / "skimage" / "astronaut.png"
    if not path.exists():
        pytest.skip(f"shared test data not available: {path}")
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    hr = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    hr = F.interpolate(hr, size=(256, 256), mode="area")
    reference = F.interpolate(hr, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
    lr = degrade(hr.expand(3, -1, -1, -1), DegradationConfig(), _gen(0))
    assert lr.shape == (3, 3, 64, 64)
    for image in lr:
        assert float((image.mean((1, 2)) - reference[0].mean((1, 2))).abs().max()) < 0.03
        corr = torch.corrcoef(torch.stack([image.flatten(), reference[0].flatten()]))[0, 1]
        assert float(corr) > 0.7
        assert float((image - reference[0]).abs().mean()) > 0.01
