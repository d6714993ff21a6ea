"""The latent tiles of a diffusion stage, and what out-of-memory back-off shrinks in them.

Shared by the stages that sample on the tiled latent engine (stage 2 and the SCEdit activation), so both cut
their latents the same way for the same options and shrink the same way when the device runs out of memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from cassr_cli.tiling.plan import TilePlan, plan_tiles


def diffusion_plan(
    latent_h: int, latent_w: int, tile_px: int, *, overlap_px: int, shifted: bool, vae_factor: int, latent_multiple: int
) -> TilePlan:
    """The diffusion tile plan over a ``latent_h × latent_w`` latent for ``tile_px``-pixel tiles.

    Overlapping tiles (``overlap_px``, at most half a tile) start anywhere; ``shifted`` tiles do not overlap
    (the grid moves every step instead, :class:`~cassr_cli.tiling.shift.GridShifts`) and start on the UNet's
    latent multiple, so a shifted tile's attention tokens line up with a latent-sized canvas.
    """
    m = latent_multiple
    tile = max(m, tile_px // vae_factor // m * m)
    if shifted:
        return plan_tiles(latent_h, latent_w, tile, 0, align=m, multiple=m)
    overlap = min(overlap_px // vae_factor, tile // 2)
    return plan_tiles(latent_h, latent_w, tile, overlap, align=1, multiple=m)


@dataclass(frozen=True)
class TileSize:
    """What out-of-memory back-off shrinks in a sampling run: the tile (pixels) and the tile batch."""

    tile_px: int
    batch: int

    def __str__(self) -> str:
        return f"{self.tile_px}-pixel tiles, {self.batch} per UNet call"

    def smaller(self, min_px: int, align: int) -> TileSize | None:
        """Half the tile batch, else half the tile (while it stays ≥ ``min_px`` and a multiple of ``align``
        pixels), else None."""
        if self.batch > 1:
            return TileSize(self.tile_px, self.batch // 2)
        half = self.tile_px // 2
        if half >= min_px and half % align == 0:
            return TileSize(half, self.batch)
        return None
