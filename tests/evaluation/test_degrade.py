"""Synthetic LR inputs: bicubic is MATLAB's imresize; realesrgan is seeded per (seed, image name)."""

from __future__ import annotations

import numpy as np
import pytest
from eval_support import textured

from cassr_cli.evaluation.degrade import synthesise_lr
from cassr_cli.evaluation.imresize import imresize
from cassr_cli.evaluation.pictures import Picture


def picture(seed: int = 0, h: int = 64, w: int = 48) -> Picture:
    return Picture(textured(h, w, seed).astype(np.float64), False)


def test_bicubic_is_matlab_imresize_on_8bit_levels() -> None:
    hr = picture()
    lr = synthesise_lr(hr, method="bicubic", scale=4, seed=0, key="a.png")
    assert lr.shape == (16, 12, 3)
    assert np.array_equal(lr, imresize(hr.levels, 16, 12, quantize=True))
    assert np.array_equal(lr, synthesise_lr(hr, method="bicubic", scale=4, seed=99, key="b.png"))  # not random


def test_realesrgan_is_seeded_by_seed_and_name() -> None:
    hr = picture(1)
    a = synthesise_lr(hr, method="realesrgan", scale=4, seed=0, key="a.png")
    assert a.shape == (16, 12, 3) and np.array_equal(a, np.round(a)) and a.min() >= 0 and a.max() <= 255
    assert np.array_equal(a, synthesise_lr(hr, method="realesrgan", scale=4, seed=0, key="a.png"))
    assert not np.array_equal(a, synthesise_lr(hr, method="realesrgan", scale=4, seed=1, key="a.png"))
    assert not np.array_equal(a, synthesise_lr(hr, method="realesrgan", scale=4, seed=0, key="b.png"))


def test_hr_must_be_mod_cropped() -> None:
    with pytest.raises(ValueError, match="multiple of scale"):
        synthesise_lr(picture(h=63), method="bicubic", scale=4, seed=0, key="a")
    with pytest.raises(ValueError, match="unknown degradation"):
        synthesise_lr(picture(), method="jpeg", scale=4, seed=0, key="a")
