"""The tiled latent engine: untiled equivalence, no seams, UNet call counts, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from cassr_cli.engine.attention import GuidanceContext, install_processors, restore_processors
from cassr_cli.engine.base_model import encode_prompt, load_base_model
from cassr_cli.engine.denoise import DenoiseSettings, Noise, TextConditioning, denoise, noised
from cassr_cli.engine.schedulers import make_scheduler, plan_schedule
from cassr_cli.engine.vae_tiling import decode_tiled, encode_tiled
from cassr_cli.runtime.device import Runtime
from cassr_cli.tiling.plan import plan_tiles

CPU = Runtime(torch.device("cpu"), torch.float32)
SIZE = 48  # latent pixels (384 output pixels)


@pytest.fixture(scope="module")
def base(tiny_weights):
    model = load_base_model(tiny_weights / "sd21-base", CPU)
    previous = install_processors(model.unet)
    yield model
    restore_processors(model.unet, previous)


@pytest.fixture(scope="module")
def scene():
    """A smooth reference latent (seams show on smooth content) and a slightly different LR guide."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    ref = torch.stack([xx, yy, xx * yy, torch.sin(3 * xx)])[None] * 0.8
    return ref, ref * 0.9


def _text(base) -> TextConditioning:
    empty = encode_prompt(base, "", CPU.device)
    return TextConditioning(cond=empty, guide=empty, uncond=empty)


def _run(base, scene, settings, *, window=None, seed=0, scheduler="dpmpp-2m"):
    ref, lr = scene
    noise = Noise.draw(tuple(ref.shape), settings.streams, torch.Generator().manual_seed(seed), CPU.device)
    if window is not None:
        y0, y1, x0, x1 = window
        ref, lr, noise = ref[..., y0:y1, x0:x1], lr[..., y0:y1, x0:x1], noise.crop(y0, y1, x0, x1)
    guides = {"ref": ref, "lr": lr}
    return denoise(
        base.unet,
        make_scheduler(scheduler, base.scheduler_config),
        ref,
        {s: guides[s] for s in settings.streams},
        _text(base),
        settings,
        noise,
        torch.Generator().manual_seed(seed + 1),
        dtype=torch.float32,
    )


def test_tile_covering_the_latent_equals_an_untiled_loop(base, scene):
    """The tiled engine with one covering tile reproduces a plain, untiled sampling loop."""
    settings = DenoiseSettings(steps=3, strength=0.7, tile=SIZE, overlap=0)
    tiled, stats = _run(base, scene, settings)
    assert stats.tiles == 1
    # The untiled reference loop, written out here without the engine's tiling and blending.
    ref, lr = scene
    noise = Noise.draw(tuple(ref.shape), settings.streams, torch.Generator().manual_seed(0), CPU.device)
    scheduler = make_scheduler("dpmpp-2m", base.scheduler_config)
    schedule = plan_schedule(scheduler, settings.steps, settings.strength, CPU.device)
    latent = scheduler.add_noise(ref, noise.start, schedule.timesteps[:1])
    emb = _text(base).cond
    for t in schedule.timesteps:
        guides = [noised(g, noise.streams[s], t, scheduler.alphas_cumprod) for s, g in (("lr", lr), ("ref", ref))]
        rows = torch.cat([scheduler.scale_model_input(latent, t), *guides])
        ctx = GuidanceContext("batched", (0,), streams=("lr", "ref"), log_weights=(0.0, 0.0))
        out = base.unet(rows, t, encoder_hidden_states=emb.expand(3, -1, -1), cross_attention_kwargs={"guidance": ctx}).sample
        latent = scheduler.step(out[:1], t, latent).prev_sample
    assert torch.allclose(tiled, latent, atol=1e-5)


def _seam_ratio(field: torch.Tensor, cuts: list[int]) -> float:
    """Mean |gradient| across the given column/row boundaries divided by the mean elsewhere."""
    dx = (field[..., :, 1:] - field[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    dy = (field[..., 1:, :] - field[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    at = [c - 1 for c in cuts]
    rest = [c for c in range(dx.numel()) if c not in at]
    return max((dx[at].mean() / dx[rest].mean()).item(), (dy[at].mean() / dy[rest].mean()).item())


SEAM_THRESHOLD = 1.4


def test_small_tiles_leave_no_seam_where_naive_stitching_does(base, scene):
    """Seams are discontinuities of the tiling error (tiled − untiled) at tile boundaries. Blending at
    every step keeps that error as smooth across boundaries as inside tiles; running tiles independently
    and stitching them (what blending exists to avoid) does not."""
    full, _ = _run(base, scene, DenoiseSettings(steps=4, strength=0.6, tile=SIZE, overlap=0))
    blended, stats = _run(base, scene, DenoiseSettings(steps=4, strength=0.6, tile=16, overlap=8))
    assert stats.tiles == 25
    plan = plan_tiles(SIZE, SIZE, 16, 8, 1, multiple=8)  # the engine's latent plan
    edges = sorted({t.x0 for t in plan} | {t.x1 for t in plan})
    edges = [e for e in edges if 0 < e < SIZE]
    naive = torch.zeros_like(full)
    settings = DenoiseSettings(steps=4, strength=0.6, tile=16, overlap=0)
    for y in range(0, SIZE, 16):
        for x in range(0, SIZE, 16):
            naive[..., y : y + 16, x : x + 16] = _run(base, scene, settings, window=(y, y + 16, x, x + 16))[0]
    blended_ratio = _seam_ratio(blended - full, edges)
    naive_ratio = _seam_ratio(naive - full, [16, 32])
    assert naive_ratio > SEAM_THRESHOLD, f"the statistic must catch naive stitching ({naive_ratio:.2f})"
    assert blended_ratio < SEAM_THRESHOLD, f"seam ratio {blended_ratio:.2f}"


def test_tiled_vae_equals_untiled_when_one_tile_and_has_no_seam_when_small(base):
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
    pixels = torch.stack([xx, yy, (xx + yy) / 2])[None]
    with torch.no_grad():
        latent = encode_tiled(base.vae, pixels, tile_px=256, device=CPU.device, dtype=torch.float32)
        direct = base.vae.encode(pixels * 2 - 1).latent_dist.mean * base.vae.config.scaling_factor
        assert torch.allclose(latent, direct, atol=1e-5)
        decoded, retries = decode_tiled(base.vae, latent, tile_px=256, dtype=torch.float32)
        direct_px = ((base.vae.decode(latent / base.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        assert retries == 0 and torch.allclose(decoded, direct_px, atol=1e-5)
        small, _ = decode_tiled(base.vae, latent, tile_px=128, dtype=torch.float32)
        naive = torch.zeros_like(direct_px)
        for y in (0, 16):
            for x in (0, 16):
                tile = latent[..., y : y + 16, x : x + 16] / base.vae.config.scaling_factor
                naive[..., y * 8 : y * 8 + 128, x * 8 : x * 8 + 128] = ((base.vae.decode(tile).sample + 1) / 2).clamp(0, 1)
    assert _seam_ratio(naive - direct_px, [128]) > SEAM_THRESHOLD
    plan = plan_tiles(32, 32, 16, 4, 1).scaled(8)
    cuts = sorted({t.x0 for t in plan if t.x0} | {t.x1 for t in plan if t.x1 < 256})
    assert _seam_ratio(small - direct_px, cuts) < SEAM_THRESHOLD


@pytest.mark.parametrize(
    ("mode", "cfg_scale", "streams"),
    [("per-step", 1.0, ("lr", "ref")), ("cached", 1.0, ("lr", "ref")), ("per-step", 3.0, ("lr", "ref")),
     ("cached", 3.0, ("lr", "ref")), ("per-step", 1.0, ("ref",)), ("cached", 1.0, ())],
)
def test_unet_rows_and_calls_match_the_plan(base, scene, mode, cfg_scale, streams):
    steps, tile_batch = 3, 4
    settings = DenoiseSettings(
        steps=steps, strength=0.5, guidance_mode=mode, streams=streams, log_weights=(0.0,) * len(streams),
        guidance_scale=cfg_scale, tile=16, overlap=8, tile_batch=tile_batch,
    )
    _, stats = _run(base, scene, settings)
    tiles, s, cfg = stats.tiles, len(streams), 2 if cfg_scale > 1 else 1
    batches = math.ceil(tiles / tile_batch)
    assert stats.steps == steps
    if mode == "per-step":
        assert stats.unet_rows == tiles * steps * (cfg + s)
        assert stats.unet_calls == batches * steps
    else:
        assert stats.unet_rows == tiles * (steps * cfg + s)
        assert stats.unet_calls == batches * (steps + (1 if s else 0))


def test_cached_guidance_at_the_current_timestep_equals_per_step(base, scene):
    """With one step and t_g equal to that step's timestep, cached K/V are exactly the per-step ones."""
    scheduler = make_scheduler("ddim", base.scheduler_config)
    first = int(plan_schedule(scheduler, 1, 0.5, CPU.device).timesteps[0])
    per_step = DenoiseSettings(steps=1, strength=0.5, tile=16, overlap=8, guidance_mode="per-step")
    cached = DenoiseSettings(steps=1, strength=0.5, tile=16, overlap=8, guidance_mode="cached", guidance_timestep=first)
    a, _ = _run(base, scene, per_step, scheduler="ddim")
    b, stats = _run(base, scene, cached, scheduler="ddim")
    assert stats.guidance_cache_bytes > 0
    assert torch.allclose(a, b, atol=1e-5)


def test_same_seed_same_result_other_seed_differs(base, scene):
    settings = DenoiseSettings(steps=2, strength=0.5, tile=16, overlap=8)
    a, _ = _run(base, scene, settings, seed=3)
    b, _ = _run(base, scene, settings, seed=3)
    c, _ = _run(base, scene, settings, seed=4)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


@pytest.mark.parametrize("scheduler", ["dpmpp-2m", "ddim", "euler", "euler-a", "unipc"])
def test_every_scheduler_runs_and_is_reproducible(base, scene, scheduler):
    settings = DenoiseSettings(steps=2, strength=0.5, tile=24, overlap=8)
    a, _ = _run(base, scene, settings, scheduler=scheduler)
    b, _ = _run(base, scene, settings, scheduler=scheduler)
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_classifier_free_guidance_combines_uncond_and_cond_in_the_right_order(base, scene):
    """One DDIM step is linear in the prediction, so with CFG the result must be
    x_uncond + s·(x_cond − x_uncond), where x_cond / x_uncond are the CFG-free steps with each prompt."""
    ref, lr = scene
    emb = {p: encode_prompt(base, p, CPU.device) for p in ("", "a sharp photo", "blurry, noisy")}
    noise = Noise.draw(tuple(ref.shape), ("lr", "ref"), torch.Generator().manual_seed(0), CPU.device)

    def one_step(text, scale):
        settings = DenoiseSettings(steps=1, strength=0.6, tile=24, overlap=8, guidance_scale=scale)
        out, _ = denoise(base.unet, make_scheduler("ddim", base.scheduler_config), ref, {"lr": lr, "ref": ref},
                         text, settings, noise, torch.Generator(), dtype=torch.float32)
        return out

    cond = one_step(TextConditioning(cond=emb["a sharp photo"], guide=emb[""]), 1.0)
    uncond = one_step(TextConditioning(cond=emb["blurry, noisy"], guide=emb[""]), 1.0)
    cfg = one_step(TextConditioning(cond=emb["a sharp photo"], guide=emb[""], uncond=emb["blurry, noisy"]), 3.0)
    assert (cond - uncond).abs().max() > 1e-4  # the prompts matter, so the test can tell the order
    assert torch.allclose(cfg, uncond + 3.0 * (cond - uncond), atol=1e-4)


@pytest.mark.parametrize(("steps", "strength"), [(10, 0.005), (30, 0.02), (11, 0.01), (500, 0.5), (500, 1.0)])
def test_extreme_steps_and_strength_give_distinct_timesteps(base, steps, strength):
    for name in ("dpmpp-2m", "ddim", "unipc", "euler"):
        scheduler = make_scheduler(name, base.scheduler_config)
        schedule = plan_schedule(scheduler, steps, strength, CPU.device)
        t = schedule.timesteps
        assert len(t) == steps, name
        assert len(torch.unique(t)) == steps, f"{name}: repeated timesteps"


def test_more_steps_than_training_timesteps_is_refused(base):
    with pytest.raises(ValueError, match="training timesteps"):
        plan_schedule(make_scheduler("ddim", base.scheduler_config), 1001, 1.0, CPU.device)


def test_tiny_strength_runs_finite(base, scene):
    out, _ = _run(base, scene, DenoiseSettings(steps=10, strength=0.005, tile=24, overlap=8))
    assert torch.isfinite(out).all()


def test_prediction_type_comes_from_the_base_model(base):
    config = dict(base.scheduler_config, prediction_type="v_prediction")
    for name in ("dpmpp-2m", "ddim", "euler", "euler-a", "unipc"):
        assert make_scheduler(name, config).config.prediction_type == "v_prediction", name
