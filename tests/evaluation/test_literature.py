"""The calibration of `cassr eval`: bicubic ×4 Y-PSNR/SSIM of the SR literature (EDSR and RCAN tables).

Set5 goes through the real command (pairing, the bicubic variant through the runner, PNG outputs,
scoring, metrics.json); BSD100 (100 images) through the same library functions directly, to stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from eval_support import cassr, describe

from cassr_cli.evaluation.imresize import imresize
from cassr_cli.evaluation.metrics.full_reference import full_reference_scores
from cassr_cli.evaluation.pairing import pair_images
from cassr_cli.evaluation.pictures import mod_crop, read_picture

LITERATURE = {"set5_x4": (28.42, 0.8104), "bsd100_x4": (25.96, 0.6675)}
PSNR_TOLERANCE = 0.05
SSIM_TOLERANCE = 0.002


@pytest.mark.shared
def test_set5_bicubic_x4_through_cassr_eval(tmp_path: Path) -> None:
    folder = shared_path("testdata", "set5_x4")
    out = tmp_path / "out"
    result = cassr(["eval", folder, out, "--lr", folder, "--only", "bicubic", "--metrics", "psnr_y,ssim_y"])
    assert result.exit_code == 0, describe(result)
    mean = json.loads((out / "metrics.json").read_text())["variants"]["bicubic"]["mean"]
    psnr, ssim = LITERATURE["set5_x4"]
    # measured: 28.430 dB / 0.8111
    assert abs(mean["psnr_y"] - psnr) <= PSNR_TOLERANCE, mean
    assert abs(mean["ssim_y"] - ssim) <= SSIM_TOLERANCE, mean


@pytest.mark.shared
def test_bsd100_bicubic_x4() -> None:
    folder = shared_path("testdata", "bsd100_x4")
    pairing = pair_images(str(folder), str(folder), scale=4)
    assert len(pairing.images) == 100
    psnrs, ssims = [], []
    for image in pairing.images:
        assert image.hr is not None and image.lr is not None
        hr = mod_crop(read_picture(image.hr, max_pixels=10**8), 4)
        lr = read_picture(image.lr, max_pixels=10**8)
        up = imresize(lr.levels, hr.height, hr.width, quantize=True)
        scores = full_reference_scores(up, hr.levels, border=4)
        psnrs.append(scores["psnr_y"])
        ssims.append(scores["ssim_y"])
    psnr, ssim = LITERATURE["bsd100_x4"]
    # measured: 25.962 dB / 0.6681
    assert abs(float(np.mean(psnrs)) - psnr) <= PSNR_TOLERANCE
    assert abs(float(np.mean(ssims)) - ssim) <= SSIM_TOLERANCE
