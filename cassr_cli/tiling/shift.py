"""Per-step grid shifts for tiles without overlap (SpotDiffusion; Tiled Diffusion's random shift).

Instead of overlapping tiles blended at every step, the latent is cut into tiles that do not overlap, and
the grid moves every step: step ``k`` rolls the latent by a shift ``(dy_k, dx_k)`` before cutting, so a tile
boundary of one step lies inside tiles at the next and no boundary stays put long enough to leave a seam.
Tiles that cross the latent's edge wrap around (the roll is circular).

Shifts are deterministic (no random generator is consumed, so every other random draw of an image is the
same with or without shifting): one Weyl sequence per axis, ``frac(k·α)`` with the golden ratio's
``α = 0.618…`` for rows and ``√2 − 1`` for columns, quantised to the ``tile / unit`` possible offsets —
low-discrepancy on each axis (every offset comes up within a few steps, none twice in a row) and not
locked to each other. Step 0 is unshifted. Pure Python, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

_A1 = 0.6180339887498949  # golden ratio − 1
_A2 = 0.4142135623730951  # √2 − 1


@dataclass(frozen=True)
class GridShifts:
    """``shifts(step) → (dy, dx)``: multiples of ``unit`` in ``[0, tile_h) × [0, tile_w)``.

    Attributes:
        tile_h, tile_w: the tile size (shifts stay below it: a shift of a whole tile is no shift).
        unit: shifts are multiples of this (the UNet's latent multiple, so attention token grids line up).
    """

    tile_h: int
    tile_w: int
    unit: int = 8

    def __post_init__(self) -> None:
        if self.unit < 1 or self.tile_h % self.unit or self.tile_w % self.unit:
            raise ValueError(f"tile {self.tile_h}×{self.tile_w} must be a multiple of the shift unit {self.unit}")

    def __call__(self, step: int) -> tuple[int, int]:
        ny, nx = self.tile_h // self.unit, self.tile_w // self.unit
        fy = (step * _A1) % 1.0
        fx = (step * _A2) % 1.0
        return int(fy * ny) * self.unit, int(fx * nx) * self.unit
