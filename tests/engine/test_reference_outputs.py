"""The engine reproduces the outputs recorded before it was rebuilt around the tiled denoiser.

Reference arrays: ``tests/fixtures/engine_reference.npz``, written by ``tests/fixtures/engine_reference.py``
(which documents how and from which engine). Per-step and cached guidance, classifier-free guidance, a
trained-looking adapter with stream weights, one stream only and a stochastic sampler.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.engine_reference import CASES, CROP, FIXTURE, STATS, dequantise, run_case

TOLERANCE = 1e-4
"""Largest difference allowed on [0, 1] pixels (the fixture's resolution is 1.5e-5; float32 rounding of
reordered sums stays far below this)."""


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_the_recorded_reference(case, reference, tiny_weights, tmp_path_factory):
    image, stats = run_case(case, tiny_weights, tmp_path_factory.mktemp(case))
    expected_stats = dict(zip(STATS, reference[f"{case}/stats"].tolist(), strict=True))
    assert stats == expected_stats
    crop = image[..., CROP[0], CROP[1]]
    difference = (crop - dequantise(reference[f"{case}/crop"])).abs().max().item()
    assert difference < TOLERANCE, f"{case}: largest pixel difference {difference:.2e}"
    means = torch.from_numpy(reference[f"{case}/mean"])
    assert torch.allclose(image.double().mean(dim=(2, 3)), means, atol=1e-5)
