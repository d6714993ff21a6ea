"""PSNR/SSIM/NIQE: the conventions, and agreement with independent implementations (scikit-image, pyiqa,
and NIQE values recorded from pyiqa)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from cassr_cli.evaluation.metrics.full_reference import crop_border, full_reference_scores, psnr, ssim, to_y
from cassr_cli.evaluation.metrics.niqe import niqe, pristine_model


def load(*parts: str) -> np.ndarray:
    with Image.open(shared_path("testdata", *parts)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def degraded(hr: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 8, hr.shape)
    return np.clip(np.round(hr + noise), 0, 255)


# --- PSNR / SSIM conventions -----------------------------------------------------------------------------


def test_psnr_formula_and_identity() -> None:
    a = np.zeros((8, 8))
    b = np.full((8, 8), 10.0)  # MSE 100 → 10·log10(255² / 100)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(a, a) == math.inf
    assert ssim(np.arange(400.0).reshape(20, 20), np.arange(400.0).reshape(20, 20)) == pytest.approx(1.0)


def test_y_is_bt601_and_grey_is_its_own_y() -> None:
    rgb = np.array([[[255.0, 0, 0], [0, 255.0, 0], [0, 0, 255.0], [255.0, 255.0, 255.0], [0, 0, 0]]])
    np.testing.assert_allclose(to_y(rgb)[0], [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0])
    grey = np.arange(12.0).reshape(3, 4)
    assert to_y(grey) is not None and np.array_equal(to_y(grey), grey)
    assert np.array_equal(to_y(grey[:, :, None]), grey)


def test_border_of_scale_pixels_is_ignored() -> None:
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (40, 48, 3)).astype(np.float64)
    sr = hr.copy()
    sr[:4] = 0  # wrong only inside the 4-pixel border
    sr[:, -4:] = 255
    scores = full_reference_scores(sr, hr, border=4)
    assert scores["psnr_y"] == math.inf and scores["psnr_rgb"] == math.inf
    assert scores["ssim_y"] == pytest.approx(1.0)
    assert full_reference_scores(sr, hr, border=3)["psnr_y"] < 40
    with pytest.raises(ValueError):
        crop_border(hr[:8], 4)


@pytest.mark.shared
def test_ssim_agrees_with_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    for name in ("img_001_SRF_4_HR.png", "img_003_SRF_4_HR.png"):
        hr = load("set5_x4", name)
        sr = degraded(hr)
        a, b = to_y(crop_border(sr, 4)), to_y(crop_border(hr, 4))
        theirs = metrics.structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert ssim(a, b) == pytest.approx(theirs, abs=1e-6)
        assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(b, a, data_range=255), abs=1e-9)


@pytest.mark.shared
def test_psnr_ssim_agree_with_pyiqa() -> None:
    pyiqa = pytest.importorskip("pyiqa")
    torch = pytest.importorskip("torch")
    psnr_y = pyiqa.create_metric("psnry", device="cpu", color_space="ycbcr", crop_border=4, data_range=1.0, eps=0)
    ssim_y = pyiqa.create_metric("ssim", device="cpu", color_space="ycbcr", crop_border=4)
    for name in ("img_002_SRF_4_HR.png", "img_004_SRF_4_HR.png"):
        hr = load("set5_x4", name)
        sr = degraded(hr, seed=1)
        ours = full_reference_scores(sr, hr, border=4)

        def t(x: np.ndarray):  # noqa: ANN202
            return torch.from_numpy(x.transpose(2, 0, 1)[None] / 255.0)

        assert ours["psnr_y"] == pytest.approx(float(psnr_y(t(sr), t(hr))), abs=1e-4)
        # pyiqa rounds Y to integers (MATLAB's uint8 rgb2ycbcr); basicsr and cassr do not
        assert ours["ssim_y"] == pytest.approx(float(ssim_y(t(sr), t(hr))), abs=2e-3)


# --- NIQE ----------------------------------------------------------------------------------------------

PYIQA_NIQE = {  # pyiqa 0.1.16 `niqe` (test_y_channel, YIQ luma, the same pristine model), float64 input
    ("skimage", "astronaut.png"): 3.0628,
    ("skimage", "chelsea.png"): 2.5721,
    ("skimage", "coffee.png"): 4.0592,
    ("skimage", "rocket.jpg"): 7.0356,
    ("realsrset", "Lincoln.png"): 7.9616,
    ("realsrset", "building.png"): 6.3052,
    ("realsrset", "frog.png"): 10.6413,
}


@pytest.mark.shared
def test_niqe_matches_values_recorded_from_pyiqa() -> None:
    diffs = [niqe(load(*key)) - value for key, value in PYIQA_NIQE.items()]
    # measured: |diff| ≤ 0.043 (building), mean |diff| 0.011; see docs/quality.md for why they differ
    assert max(abs(d) for d in diffs) < 0.06, diffs
    assert float(np.mean(np.abs(diffs))) < 0.02, diffs


def _pyiqa_niqe():  # noqa: ANN202 - pyiqa's NIQE fed cassr's pristine model (saved as its .mat file)
    pyiqa = pytest.importorskip("pyiqa")
    scipy_io = pytest.importorskip("scipy.io")
    import tempfile
    from pathlib import Path

    mu, cov, _ = pristine_model()
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "niqe_modelparameters.mat"
        scipy_io.savemat(params, {"mu_prisparam": mu[None], "cov_prisparam": cov})
        return pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(params))


def _niqe_differences(images: list[tuple[str, str]]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    metric = _pyiqa_niqe()
    diffs = []
    for folder, name in images:
        image = load(folder, name)
        theirs = float(metric(torch.from_numpy(image.transpose(2, 0, 1)[None] / 255.0)))
        diffs.append(niqe(image) - theirs)
    return np.asarray(diffs)


@pytest.mark.shared
def test_niqe_agrees_with_pyiqa() -> None:
    diffs = _niqe_differences(
        [("set5_x4", "img_003_SRF_4_HR.png"), ("set5_x4", "img_005_SRF_4_HR.png"), ("realsrset", "Lincoln.png")]
    )
    # measured: -0.016, -0.005, -0.010
    assert np.abs(diffs).max() < 0.06, diffs


@pytest.mark.slow
@pytest.mark.shared
def test_niqe_agrees_with_pyiqa_on_set5_and_set14() -> None:
    images = [
        (folder, p.name) for folder in ("set5_x4", "set14_x4") for p in sorted(shared_path("testdata", folder).glob("*_HR.png"))
    ]
    diffs = _niqe_differences(images)
    # measured on these 19 images: mean diff +0.002, mean |diff| 0.019, max |diff| 0.113
    assert abs(diffs.mean()) < 0.02
    assert np.abs(diffs).mean() < 0.04
    assert np.abs(diffs).max() < 0.15


@pytest.mark.shared
def test_niqe_orders_clean_blurred_and_noisy() -> None:
    hr = load("skimage", "astronaut.png")
    import cv2

    blurred = cv2.GaussianBlur(hr, (0, 0), 2.0)
    noisy = degraded(hr, seed=3)
    assert niqe(hr) < niqe(noisy) and niqe(hr) < niqe(blurred)
    assert niqe(hr) == niqe(hr.copy())  # deterministic


def test_niqe_needs_one_block_and_ships_its_model() -> None:
    mu, cov, window = pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36) and window.shape == (7, 7)
    assert window.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="96x96"):
        niqe(np.zeros((95, 200, 3)))
    flat = np.zeros((96, 96, 3))
    with pytest.raises(ValueError):
        niqe(flat)
