"""One image on several devices: the tiled denoiser deals tile batches over model replicas (fake tile
models here); the whole cascade with ``--device cpu,cpu`` equals ``--device cpu`` (tiny weights)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.pipeline import CassrPipeline
from cassr_cli.engine.tiled_denoiser import TiledDenoiser, TileReplica
from cassr_cli.tiling.plan import plan_tiles
from cassr_cli.tiling.shift import GridShifts

CPU = torch.device("cpu")


def _latent(h: int = 24, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))


class Pointwise:
    """A tile model that is a per-pixel function of its input and a condition (4× the latent's size): tiling
    and spreading must not change it."""

    def __init__(self) -> None:
        self.batches: list = []

    def __call__(self, x, t, batch, crops):  # noqa: ANN001, ANN204
        self.batches.append(batch)
        return (torch.tanh(x) * (1 + t.float() / 100) + F.avg_pool2d(crops["image"], 4)[:, :1]).float()


def _full(x: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * (1 + t.float() / 100) + F.avg_pool2d(image, 4)[:, :1]


class Recording(Pointwise):
    """:class:`Pointwise` that also records the threads it ran on and whether autograd was off."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()
        self.inference: set[bool] = set()

    def __call__(self, x, t, batch, crops):  # noqa: ANN001, ANN204
        self.threads.add(threading.current_thread().name)
        self.inference.add(torch.is_inference_mode_enabled())
        return super().__call__(x, t, batch, crops)


class Failing(Pointwise):
    def __call__(self, x, t, batch, crops):  # noqa: ANN001, ANN204
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize(("replicas", "shift"), [(1, False), (2, False), (2, True)])
def test_batches_are_dealt_round_robin_and_the_blend_is_the_untiled_result(replicas, shift):
    x = _latent()
    image = torch.rand(1, 3, 24 * 4, 40 * 4, generator=torch.Generator().manual_seed(1))
    plan = plan_tiles(24, 40, 16 if shift else 8, 0 if shift else 4, align=8 if shift else 1, multiple=8)
    models = [Recording() for _ in range(1 + replicas)]
    denoiser = TiledDenoiser(
        models[0], plan, tile_batch=2, conditions={"image": image}, steps=3, device=CPU,
        shifts=GridShifts(plan.tile_height, plan.tile_width, 8) if shift else None,
        replicas=[TileReplica(m, CPU) for m in models[1:]],
    )
    try:
        with torch.inference_mode():
            for step in range(3):
                t = torch.tensor(100 * (3 - step))
                torch.testing.assert_close(denoiser(x, t), _full(x, t, image), atol=1e-5, rtol=1e-5)
    finally:
        denoiser.close()
    n, batches = len(models), len(denoiser.batches)
    assert batches >= n
    for w, model in enumerate(models):  # every worker ran its share: batch i goes to worker i mod n, every step
        assert sorted({b.index for b in model.batches}) == list(range(w, batches, n))
        assert len(model.batches) == 3 * len(range(w, batches, n))
        assert model.threads and all(name.startswith("cassr-tiles") for name in model.threads)
        assert model.inference == {True}  # the caller's inference mode reaches the worker threads
    assert denoiser.worker_batches == [len(m.batches) for m in models]


def test_a_failing_replica_fails_the_step_and_the_others_stop():
    plan = plan_tiles(24, 40, 8, 4, align=1, multiple=8)
    image = torch.zeros(1, 3, 96, 160)
    good = Pointwise()
    denoiser = TiledDenoiser(good, plan, tile_batch=1, conditions={"image": image}, replicas=[TileReplica(Failing(), CPU)])
    with pytest.raises(RuntimeError, match="out of memory"):
        denoiser(_latent(), torch.tensor(10))
    denoiser.close()
    assert len(good.batches) < len(denoiser.batches)  # stopped early, not after all of its batches


# --- the whole cascade ----------------------------------------------------------------------------------

SMALL = dict(
    steps=2,
    tile_size=64,
    tile_overlap=32,
    tile_batch=1,
    vae_tile_size=128,
    activation_tile_size=32,
    activation_tile_overlap=8,
)


@pytest.mark.parametrize(
    "settings",
    [
        {"guidance_mode": "per-step"},
        {"guidance_mode": "cached"},
        {"guidance_mode": "per-step", "guidance_refresh": 2, "tile_batch": 2},
        {"guidance_mode": "per-step", "tile_shift": True, "guidance_scale": 2.0},
    ],
    ids=["per-step", "cached", "refreshed", "shifted-cfg"],
)
def test_two_cpu_replicas_equal_one_device(tiny_weights, settings):
    image = torch.rand(1, 3, 24, 28, generator=torch.Generator().manual_seed(3))
    results = {}
    for device in ("cpu", "cpu,cpu"):
        config = UpscaleConfig(weights_dir=str(tiny_weights), device=device, **{**SMALL, **settings})
        pipeline = CassrPipeline.from_config(config)
        results[device] = pipeline(image, out_size=(96, 112), generator=torch.Generator().manual_seed(7))
    one, two = results["cpu"], results["cpu,cpu"]
    torch.testing.assert_close(two.image, one.image, atol=1e-5, rtol=1e-5)
    spread = two.stats["denoise"]["devices"]
    assert [d["device"] for d in spread] == ["cpu", "cpu"]
    batches = -(-one.stats["denoise"]["tiles"] // one.stats["denoise"]["tile_batch"])
    assert batches >= 2
    steps = one.stats["denoise"]["steps"]
    assert [d["tile_batches"] for d in spread] == [steps * len(range(w, batches, 2)) for w in range(2)]
    assert all(d["unet_calls"] > 0 for d in spread)  # each replica's own UNet really ran
    assert sum(d["unet_calls"] for d in spread) == two.stats["denoise"]["unet_calls"] == one.stats["denoise"]["unet_calls"]
    assert "devices" not in one.stats["denoise"]


def test_shifted_tiles_with_a_kept_guidance_canvas_stay_on_the_first_device(tiny_weights):
    image = torch.rand(1, 3, 24, 28, generator=torch.Generator().manual_seed(3))
    settings = {**SMALL, "guidance_mode": "cached", "tile_shift": True}
    one, two = (
        CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), device=d, **settings))(
            image, out_size=(96, 112), generator=torch.Generator().manual_seed(7)
        )
        for d in ("cpu", "cpu,cpu")
    )
    assert torch.equal(two.image, one.image)
    assert "devices" not in two.stats["denoise"]
