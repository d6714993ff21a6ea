"""Alpha helpers (cassr_cli.io.alpha): colour bleeding under transparency, alpha resizing, opacity test."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cassr_cli.io.alpha import fill_transparent_colors, is_fully_opaque, resize_alpha


def white_disc(size: int = 48, radius: float = 14.0) -> tuple[np.ndarray, np.ndarray]:
    """A white disc (alpha 1) on a transparent background whose stored colour is black."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= radius**2
    alpha = inside.astype(np.float32)
    rgb = np.repeat(alpha[..., None], 3, axis=2)
    return rgb, alpha


def upscale_rgb(rgb: np.ndarray, factor: int = 4) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.clip(cv2.resize(rgb, (w * factor, h * factor), interpolation=cv2.INTER_CUBIC), 0, 1)


def test_fill_bleeds_visible_colour_into_transparent_pixels() -> None:
    rgb, alpha = white_disc()
    filled = fill_transparent_colors(rgb, alpha)
    assert filled.shape == rgb.shape and filled.dtype == np.float32
    ring = (cv2.dilate(alpha, np.ones((5, 5), np.uint8)) > 0) & (alpha == 0)  # just outside the disc
    assert ring.any() and filled[ring].min() > 0.95
    np.testing.assert_array_equal(filled[alpha == 1], rgb[alpha == 1])


def test_fill_prevents_the_dark_halo_of_an_upscale() -> None:
    rgb, alpha = white_disc()
    big_alpha = resize_alpha(alpha, 4 * alpha.shape[0], 4 * alpha.shape[1])
    edge = (big_alpha > 0.05) & (big_alpha < 0.95)
    assert edge.sum() > 100
    filled_big = upscale_rgb(fill_transparent_colors(rgb, alpha))
    unfilled_big = upscale_rgb(rgb)
    assert filled_big[edge].min() > 0.9  # the edge stays white
    assert unfilled_big[edge].mean() < 0.8 and unfilled_big[edge].min() < 0.5  # black bleeds in: a halo


def test_fill_takes_colour_from_the_nearest_visible_side() -> None:
    rgb = np.zeros((16, 48, 3), np.float32)
    alpha = np.zeros((16, 48), np.float32)
    rgb[:, :16] = (1, 0, 0)
    rgb[:, 32:] = (0, 0, 1)
    alpha[:, :16] = 1
    alpha[:, 32:] = 1
    filled = fill_transparent_colors(rgb, alpha)
    assert filled[8, 17, 0] > 0.7 and filled[8, 17, 2] < 0.3  # next to red
    assert filled[8, 30, 2] > 0.7 and filled[8, 30, 0] < 0.3  # next to blue
    assert filled[..., 1].max() < 1e-6  # nothing green appears


def test_fill_composites_partial_alpha_and_keeps_uniform_translucency() -> None:
    rgb = np.full((8, 8, 3), (0.2, 0.4, 0.6), np.float32)
    alpha = np.full((8, 8), 0.5, np.float32)
    np.testing.assert_allclose(fill_transparent_colors(rgb, alpha), rgb, atol=1e-5)


def test_fill_leaves_opaque_and_fully_transparent_images_alone() -> None:
    rgb = np.random.default_rng(0).random((9, 7, 3), dtype=np.float32)
    opaque = fill_transparent_colors(rgb, np.ones((9, 7), np.float32))
    np.testing.assert_array_equal(opaque, rgb)
    transparent = fill_transparent_colors(rgb, np.zeros((9, 7), np.float32))
    np.testing.assert_array_equal(transparent, rgb)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (13, 1), (17, 31)])
def test_fill_handles_odd_and_tiny_shapes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.random((*shape, 3), dtype=np.float32)
    alpha = (rng.random(shape) > 0.5).astype(np.float32)
    alpha.flat[0] = 1
    filled = fill_transparent_colors(rgb, alpha)
    assert filled.shape == rgb.shape and np.isfinite(filled).all()
    assert filled.min() >= 0 and filled.max() <= 1
    np.testing.assert_array_equal(filled[alpha == 1], rgb[alpha == 1])


def test_fill_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="alpha shape"):
        fill_transparent_colors(np.zeros((4, 4, 3), np.float32), np.zeros((4, 5), np.float32))


def test_resize_alpha_enlarge_keeps_solid_regions_exact() -> None:
    _, alpha = white_disc(32, 9.0)
    big = resize_alpha(alpha, 128, 96)
    assert big.shape == (128, 96) and big.dtype == np.float32
    assert big.min() >= 0 and big.max() <= 1  # bicubic overshoot clipped
    assert big[64, 48] == 1.0 and big[0, 0] == 0.0  # deep inside / far outside the disc
    assert np.any((big > 0.05) & (big < 0.95))  # a smooth edge, not nearest-neighbour
    square = np.zeros((40, 40), np.float32)
    square[5:35, 5:35] = 1
    odd = resize_alpha(square, 45, 123)  # non-integer factors: raw bicubic is off by ~1e-7 inside
    assert np.all(odd[15:30, 30:93] == 1.0) and np.all(odd[:2, :4] == 0.0)


def test_resize_alpha_shrink_averages_area() -> None:
    alpha = np.zeros((8, 8), np.float32)
    alpha[:, :4] = 1
    small = resize_alpha(alpha, 2, 2)
    np.testing.assert_allclose(small, [[1, 0], [1, 0]], atol=1e-6)
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.float32)
    np.testing.assert_allclose(resize_alpha(checker, 4, 4), 0.5, atol=1e-6)


def test_resize_alpha_uses_bicubic_up_and_area_down() -> None:
    alpha = np.random.default_rng(3).random((9, 12), dtype=np.float32)
    up = resize_alpha(alpha, 27, 36)
    expected = np.clip(cv2.resize(alpha, (36, 27), interpolation=cv2.INTER_CUBIC), 0, 1)
    np.testing.assert_allclose(up, expected, atol=1e-6)
    stripes = np.tile(np.array([1, 0, 0], np.float32), (9, 3))  # [9, 9], one bright column in three
    np.testing.assert_allclose(resize_alpha(stripes, 3, 3), 1 / 3, atol=1e-6)  # area mean, not a sample


def test_resize_alpha_same_size_and_bad_size() -> None:
    alpha = np.random.default_rng(2).random((5, 6), dtype=np.float32)
    np.testing.assert_array_equal(resize_alpha(alpha, 5, 6), alpha)
    with pytest.raises(ValueError):
        resize_alpha(alpha, 0, 6)


def test_is_fully_opaque() -> None:
    assert is_fully_opaque(np.ones((3, 3), np.float32))
    assert is_fully_opaque(np.full((3, 3), 65535 / 65535, np.float32))
    assert not is_fully_opaque(np.full((3, 3), 65534 / 65535, np.float32))
    nearly = np.ones((3, 3), np.float32)
    nearly[1, 1] = 254 / 255
    assert not is_fully_opaque(nearly)
