"""Blend invariants: constant in → constant out, tiled identity = input, one big tile = untiled."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cassr_cli.tiling.blend import WINDOW_FLOOR, TileBlender, ramp_1d, window_2d
from cassr_cli.tiling.plan import plan_tiles


@pytest.mark.parametrize("length,ramp", [(1, 0), (8, 4), (64, 16), (65, 16), (64, 40)])
def test_window_symmetric_strictly_positive(length, ramp):
    w = ramp_1d(length, ramp)
    assert torch.all(w >= WINDOW_FLOOR) and torch.all(w <= 1)
    assert torch.equal(w, torch.flip(w, [0]))


def test_window_2d_symmetric_on_both_axes():
    w = window_2d(48, 64, 16)
    assert torch.equal(w, torch.flip(w, [0])) and torch.equal(w, torch.flip(w, [1]))


def test_ramps_cross_fade_to_one():
    ramp = 16
    w = ramp_1d(64, ramp)
    rise, fall = w[:ramp], w[64 - ramp :]
    assert torch.allclose(rise + fall, torch.ones(ramp, dtype=torch.float64), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 30), w=st.integers(1, 30), tile=st.integers(1, 8), ov=st.integers(0, 4), value=st.floats(-5, 5))
def test_constant_blends_to_constant(h, w, tile, ov, value):
    plan = plan_tiles(h * 8, w * 8, tile * 8, min(ov, max(tile - 1, 0)) * 8, 8)
    blender = TileBlender(plan, dtype=torch.float64)
    canvas = blender.blend([(t, torch.full((2, t.height, t.width), value, dtype=torch.float64)) for t in plan], (2,))
    assert torch.allclose(canvas, torch.full_like(canvas, value), atol=1e-9)


def test_tiled_identity_returns_input():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 200, 136)
    plan = plan_tiles(200, 136, 64, 16, 8)
    assert len(plan) > 4
    blender = TileBlender(plan)
    canvas = blender.zeros((1, 3))
    for t in plan:
        rows, cols = t.slices()
        blender.add(canvas, t, image[..., rows, cols])
    assert torch.allclose(canvas, image, atol=1e-6)


def test_single_covering_tile_equals_untiled():
    image = torch.rand(3, 64, 40)
    plan = plan_tiles(64, 40, 512, 64, 8)
    assert len(plan) == 1
    out = TileBlender(plan).blend([(plan.tiles[0], image)], (3,))
    assert torch.equal(out, image)
