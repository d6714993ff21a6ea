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


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap", "folds"),
    [(64, 96, 32, 8, False), (70, 50, 24, 8, False), (40, 40, 40, 0, True), (48, 80, 16, 0, True), (256, 256, 64, 16, True)],
)
def test_tile_stack_blends_like_adding_tile_by_tile(h, w, tile, overlap, folds):
    """One fold (evenly spaced starts) or one add per tile (otherwise): the same canvas as TileBlender.add."""
    from cassr_cli.tiling.blend import TileStack, _even_stride

    plan = plan_tiles(h, w, tile, overlap, align=2 if h % 8 else 8)
    blender = TileBlender(plan)
    values = torch.rand(len(plan), 3, plan.tile_height, plan.tile_width, generator=torch.Generator().manual_seed(0))
    stack = TileStack(blender, 3)
    tiles = list(plan)
    for start in range(0, len(tiles), 3):
        stack.put(tiles[start : start + 3], values[start : start + 3])
    expected = blender.blend([(t, values[i : i + 1]) for i, t in enumerate(tiles)], (1, 3))
    torch.testing.assert_close(stack.blend(), expected, atol=1e-6, rtol=1e-6)
    assert (_even_stride(plan) is not None) == folds  # both code paths are exercised
