"""TilePlan guarantees: coverage, bounds, alignment, far-edge snapping, minimum overlap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cassr_cli.tiling.plan import Tile, axis_starts, balanced_tile, padded_size, plan_tiles


@settings(max_examples=300, deadline=None)
@given(
    h_units=st.integers(1, 140),
    w_units=st.integers(1, 140),
    tile_units=st.integers(1, 16),
    overlap_frac=st.floats(0, 0.5),
    align=st.sampled_from([1, 8]),
)
def test_plan_covers_everything_in_bounds_and_aligned(h_units, w_units, tile_units, overlap_frac, align):
    height, width, tile = h_units * align, w_units * align, max(tile_units * align, align)
    overlap = int(tile * overlap_frac) // align * align
    plan = plan_tiles(height, width, tile, overlap, align)
    covered = [[0] * width for _ in range(height)]
    for t in plan:
        assert 0 <= t.y0 < t.y1 <= height and 0 <= t.x0 < t.x1 <= width
        assert t.height == plan.tile_height and t.width == plan.tile_width
        assert t.y0 % align == 0 and t.x0 % align == 0
        for y in range(t.y0, t.y1):
            row = covered[y]
            for x in range(t.x0, t.x1):
                row[x] += 1
    assert all(c > 0 for row in covered for c in row)
    assert max(t.y1 for t in plan) == height and max(t.x1 for t in plan) == width


@settings(max_examples=300, deadline=None)
@given(length_units=st.integers(1, 300), tile_units=st.integers(1, 40), overlap_units=st.integers(0, 39))
def test_axis_starts_overlap_at_least_requested(length_units, tile_units, overlap_units):
    align = 8
    tile = tile_units * align
    length = max(length_units * align, tile)
    overlap = min(overlap_units, tile_units - 1) * align
    starts = axis_starts(length, tile, overlap, align)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + tile - b >= overlap, (starts, tile, overlap)


def test_small_area_gets_one_tile_of_its_size():
    plan = plan_tiles(40, 24, 512, 64, 8)
    assert plan.tiles == (Tile(0, 40, 0, 24),)
    assert (plan.tile_height, plan.tile_width) == (40, 24)


def test_last_tile_snaps_to_far_edge_and_overlaps_are_even():
    starts = axis_starts(1000, 256, 64, 8)
    assert starts[-1] == 1000 - 256
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert max(gaps) - min(gaps) <= 8  # spread evenly, not one thin sliver at the end


def test_batches_and_scaling():
    plan = plan_tiles(64, 64, 32, 8, 8)
    assert len(plan) == 9  # 3 starts per axis: 0, 16, 32
    assert [len(b) for b in plan.batches(4)] == [4, 4, 1]
    big = plan.scaled(8)
    assert big.height == 512 and big.tiles[0] == Tile(0, 256, 0, 256)


@pytest.mark.parametrize(("size", "multiple", "expected"), [(1, 8, 8), (8, 8, 8), (9, 8, 16), (125, 64, 128)])
def test_padded_size(size, multiple, expected):
    assert padded_size(size, multiple) == expected


def test_invalid_requests_raise():
    with pytest.raises(ValueError):
        plan_tiles(63, 64, 32, 8, 8)  # not padded
    with pytest.raises(ValueError):
        axis_starts(64, 32, 32, 8)  # overlap == tile


@settings(max_examples=300, deadline=None)
@given(length_units=st.integers(1, 200), tile_units=st.integers(1, 64), overlap_units=st.integers(0, 32), multiple=st.sampled_from([1, 8]))
def test_balanced_tiles_never_need_more_tiles_or_more_work(length_units, tile_units, overlap_units, multiple):
    length, tile = length_units * multiple, tile_units * multiple
    overlap = min(overlap_units, tile_units - 1) * multiple
    tile = min(tile, length)
    if overlap >= tile:
        return
    balanced = balanced_tile(length, tile, overlap, multiple)
    assert balanced % multiple == 0 or balanced == length
    assert overlap < balanced <= tile or balanced == length
    fixed_starts = axis_starts(length, tile, overlap, 1)
    balanced_starts = axis_starts(length, balanced, min(overlap, balanced - 1), 1)
    assert len(balanced_starts) <= len(fixed_starts)
    assert len(balanced_starts) * balanced <= len(fixed_starts) * tile


def test_balanced_tiles_cut_stage1_waste_on_a_512_image():
    plan = plan_tiles(512, 512, 256, 32, 8)
    assert len(plan) == 9 and plan.tile_height == 192  # 3×192 = 576 px of work per axis, not 3×256 = 768


def test_latent_tiles_keep_the_unet_multiple_while_starts_are_free():
    plan = plan_tiles(200, 136, 64, 16, align=1, multiple=8)
    assert plan.tile_height % 8 == 0 and plan.tile_width % 8 == 0


@settings(max_examples=400, deadline=None)
@given(
    h_units=st.integers(1, 64),
    w_units=st.integers(1, 64),
    tile_units=st.integers(1, 12),
    overlap=st.integers(0, 120),
)
def test_latent_plans_keep_multiples_of_8_for_any_overlap(h_units, w_units, tile_units, overlap):
    """The engine's latent plans start tiles anywhere but need sizes in multiples of 8, with any
    integer overlap (output pixels / 8)."""
    height, width, tile = h_units * 8, w_units * 8, tile_units * 8
    plan = plan_tiles(height, width, tile, overlap, align=1, multiple=8)
    assert plan.tile_height % 8 == 0 and plan.tile_width % 8 == 0
    assert plan.tile_height <= min(tile, height) and plan.tile_width <= min(tile, width)
    assert max(t.y1 for t in plan) == height and max(t.x1 for t in plan) == width
    covered = set()
    for t in plan:
        covered.update((y, x) for y in range(t.y0, t.y1, 8) for x in range(t.x0, t.x1, 8))
    assert all((y, x) in covered or any(t.y0 <= y < t.y1 and t.x0 <= x < t.x1 for t in plan)
               for y in range(0, height, 8) for x in range(0, width, 8))


def test_thin_images_keep_blending_along_the_long_axis():
    plan = plan_tiles(8, 512, 256, 32, 8)  # one row of tiles: the ramp must come from the split axis
    assert len(plan) > 1 and plan.overlap == 32
