"""The sampling loop apart from tiling, and the tiled denoiser apart from the UNet (fake tile models)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cassr_cli.engine.sampling import sample
from cassr_cli.engine.schedulers import make_scheduler, plan_schedule
from cassr_cli.engine.tiled_denoiser import TileBatch, TiledDenoiser
from cassr_cli.testing.tiny_weights import SD21_SCHEDULER
from cassr_cli.tiling.plan import plan_tiles
from cassr_cli.tiling.shift import GridShifts


def _latent(h: int = 24, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["dpmpp-2m", "euler-a"])
def test_the_loop_is_diffusers_loop_over_any_denoiser(name):
    """``sample`` with a plain function as the denoiser is the textbook diffusers loop."""

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x + torch.sin(x) * (t.float() / 1000)

    def run(loop) -> torch.Tensor:
        scheduler = make_scheduler(name, SD21_SCHEDULER)
        schedule = plan_schedule(scheduler, 4, 0.6, torch.device("cpu"))
        return loop(scheduler, _latent(), schedule.timesteps)

    def textbook(scheduler, latent, timesteps):
        generator = torch.Generator().manual_seed(9)
        kwargs = {"generator": generator} if name == "euler-a" else {}
        for t in timesteps:
            latent = scheduler.step(denoiser(scheduler.scale_model_input(latent, t), t), t, latent, **kwargs).prev_sample
        return latent

    ours = run(lambda s, x, ts: sample(denoiser, s, x, ts, generator=torch.Generator().manual_seed(9)))
    assert torch.equal(ours, run(textbook))


class Pointwise:
    """A tile model that is a per-pixel function of its input and a condition: tiling must not change it."""

    def __init__(self) -> None:
        self.batches: list[TileBatch] = []

    def __call__(self, x, t, batch, crops):  # noqa: ANN001, ANN204
        self.batches.append(batch)
        cond = crops["image"]  # f = 4 times the latent's size: pool it back to latent resolution
        pooled = F.avg_pool2d(cond, 4)
        return (torch.tanh(x) * (1 + t.float() / 100) + pooled[:, :1]).float()


def _full(x: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * (1 + t.float() / 100) + F.avg_pool2d(image, 4)[:, :1]


@pytest.mark.parametrize(("tile", "overlap", "shift", "batch"), [(8, 4, False, 3), (16, 8, False, 4), (16, 0, True, 5), (24, 0, True, 1)])
def test_pointwise_model_tiled_equals_untiled_and_conditions_are_cropped_at_their_scale(tile, overlap, shift, batch):
    x = _latent()
    image = torch.rand(1, 3, 24 * 4, 40 * 4, generator=torch.Generator().manual_seed(1))  # an image-space condition
    plan = plan_tiles(24, 40, tile, overlap, align=8 if shift else 1, multiple=8)
    model = Pointwise()
    shifts = GridShifts(plan.tile_height, plan.tile_width, 8) if shift else None
    denoiser = TiledDenoiser(model, plan, tile_batch=batch, conditions={"image": image}, shifts=shifts, steps=3)
    for step in range(3):
        t = torch.tensor(100 * (3 - step))
        torch.testing.assert_close(denoiser(x, t), _full(x, t, image), atol=1e-5, rtol=1e-5)
    per_step = -(-len(plan) // batch)
    assert len(model.batches) == 3 * per_step
    assert [b.step for b in model.batches] == [s for s in range(3) for _ in range(per_step)]
    moved = {b.shift for b in model.batches}
    assert (len(moved) > 1) == shift


def test_a_condition_that_is_not_a_multiple_of_the_latent_is_refused():
    plan = plan_tiles(24, 40, 8, 4, align=1, multiple=8)
    with pytest.raises(ValueError, match="integer multiple"):
        TiledDenoiser(Pointwise(), plan, tile_batch=2, conditions={"image": torch.zeros(1, 3, 50, 80)})


def test_grid_shifts_are_deterministic_aligned_and_spread():
    shifts = GridShifts(64, 64, 8)
    seen = [shifts(k) for k in range(16)]
    assert seen[0] == (0, 0) and seen == [shifts(k) for k in range(16)]
    assert all(0 <= dy < 64 and 0 <= dx < 64 and dy % 8 == 0 and dx % 8 == 0 for dy, dx in seen)
    assert len({dy for dy, _ in seen[:10]}) >= 7 and len({dx for _, dx in seen[:10]}) >= 7  # of 8 possible
    assert all(a != b for a, b in zip(seen, seen[1:], strict=False))  # the grid moves every step
