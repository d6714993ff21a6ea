"""The tiled latent engine on tiny weights: the sampling loop over a TiledDenoiser whose tile model is the
UNet with multiple attention. Untiled equivalence, no seams (overlapping and shifted grids), UNet call
counts per guidance schedule, determinism, every scheduler, CFG."""

from __future__ import annotations

import math

import pytest
import torch

from cassr_cli.engine.attention import install_processors, restore_processors
from cassr_cli.engine.base_model import encode_prompt, load_base_model
from cassr_cli.engine.guidance import BankSlot, CanvasBank, JointPass, ScratchBank, TileBank
from cassr_cli.engine.guided_unet import GuidanceSettings, MultiAttentionModel, TextConditioning, noise_key
from cassr_cli.engine.sampling import Noise, noised, sample
from cassr_cli.engine.schedulers import make_scheduler, plan_schedule
from cassr_cli.engine.tiled_denoiser import DenoiseStats, TiledDenoiser
from cassr_cli.engine.vae_tiling import decode_tiled, encode_tiled
from cassr_cli.runtime.device import Runtime
from cassr_cli.tiling.plan import plan_tiles
from cassr_cli.tiling.shift import GridShifts

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


def _run(
    base,
    scene,
    *,
    steps,
    strength,
    tile,
    overlap,
    guidance=None,
    tile_batch=4,
    shift=False,
    window=None,
    seed=0,
    scheduler="dpmpp-2m",
    text=None,
    guidance_scale=1.0,
):
    """Stage 2's denoising assembled from its parts: noise, schedule, tile model, tiled denoiser, loop."""
    guidance = guidance or GuidanceSettings()
    ref, lr = scene
    noise = Noise.draw(tuple(ref.shape), guidance.streams, torch.Generator().manual_seed(seed), CPU.device)
    if window is not None:
        y0, y1, x0, x1 = window
        ref, lr, noise = ref[..., y0:y1, x0:x1], lr[..., y0:y1, x0:x1], noise.crop(y0, y1, x0, x1)
    guides = {"ref": ref, "lr": lr}
    sched = make_scheduler(scheduler, base.scheduler_config)
    schedule = plan_schedule(sched, steps, strength, CPU.device)
    latent = sched.add_noise(ref, noise.start, schedule.timesteps[:1])
    h, w = ref.shape[-2:]
    plan = plan_tiles(h, w, tile, 0 if shift else overlap, align=8 if shift else 1, multiple=8)
    if not guidance.keeps_bank:
        bank = ScratchBank()
    elif shift:
        bank = CanvasBank(h, w, multiple=8)
    else:
        bank = TileBank()
    stats = DenoiseStats()
    model = MultiAttentionModel(
        base.unet, text or _text(base), guidance, alphas_cumprod=sched.alphas_cumprod, dtype=torch.float32,
        guidance_scale=guidance_scale, bank=bank, stats=stats,
    )
    conditions = {k: v for s in guidance.streams for k, v in ((s, guides[s]), (noise_key(s), noise.streams[s]))}
    shifts = GridShifts(plan.tile_height, plan.tile_width, 8) if shift else None
    denoiser = TiledDenoiser(model, plan, tile_batch=tile_batch, conditions=conditions, shifts=shifts, stats=stats)
    out = sample(denoiser, sched, latent, schedule.timesteps, generator=torch.Generator().manual_seed(seed + 1))
    stats.guidance_cache_bytes = bank.nbytes()
    return out, stats


def test_tile_covering_the_latent_equals_an_untiled_loop(base, scene):
    """The tiled engine with one covering tile reproduces a plain, untiled sampling loop."""
    tiled, stats = _run(base, scene, steps=3, strength=0.7, tile=SIZE, overlap=0)
    assert stats.tiles == 1
    # The untiled reference loop, written out here without the engine's tiling, blending or tile model.
    ref, lr = scene
    noise = Noise.draw(tuple(ref.shape), ("lr", "ref"), torch.Generator().manual_seed(0), CPU.device)
    scheduler = make_scheduler("dpmpp-2m", base.scheduler_config)
    schedule = plan_schedule(scheduler, 3, 0.7, CPU.device)
    latent = scheduler.add_noise(ref, noise.start, schedule.timesteps[:1])
    emb = _text(base).cond
    for t in schedule.timesteps:
        guides = [noised(g, noise.streams[s], t, scheduler.alphas_cumprod) for s, g in (("lr", lr), ("ref", ref))]
        rows = torch.cat([scheduler.scale_model_input(latent, t), *guides])
        ctx = JointPass(ScratchBank().view(BankSlot(0), CPU.device), ("lr", "ref"), 1, (0.0, 0.0))
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
    common = dict(steps=4, strength=0.6)
    full, _ = _run(base, scene, tile=SIZE, overlap=0, **common)
    blended, stats = _run(base, scene, tile=16, overlap=8, **common)
    assert stats.tiles == 25
    plan = plan_tiles(SIZE, SIZE, 16, 8, 1, multiple=8)  # the engine's latent plan
    edges = sorted({t.x0 for t in plan} | {t.x1 for t in plan})
    edges = [e for e in edges if 0 < e < SIZE]
    naive = torch.zeros_like(full)
    for y in range(0, SIZE, 16):
        for x in range(0, SIZE, 16):
            naive[..., y : y + 16, x : x + 16] = _run(base, scene, tile=16, overlap=0, window=(y, y + 16, x, x + 16), **common)[0]
    blended_ratio = _seam_ratio(blended - full, edges)
    naive_ratio = _seam_ratio(naive - full, [16, 32])
    assert naive_ratio > SEAM_THRESHOLD, f"the statistic must catch naive stitching ({naive_ratio:.2f})"
    assert blended_ratio < SEAM_THRESHOLD, f"seam ratio {blended_ratio:.2f}"
    # Tiles without overlap (4 tiles of 24²): a static grid leaves a seam at its one boundary; shifting the
    # grid every step (in steps of 8) spreads it over every multiple of 8. The worst single position is
    # compared, so a seam cannot hide in an average over smooth positions.
    def worst(field: torch.Tensor) -> float:
        return max(_seam_ratio(field - full, [cut]) for cut in range(8, SIZE, 8))

    static, _ = _run(base, scene, tile=24, overlap=0, **common)
    shifted, stats = _run(base, scene, tile=24, overlap=0, shift=True, **common)
    assert stats.tiles == 4
    assert worst(static) > 2.5, f"the static grid's seam must show ({worst(static):.2f})"
    assert worst(shifted) < 0.6 * worst(static), f"shifted {worst(shifted):.2f} against static {worst(static):.2f}"


def test_tiled_vae_equals_untiled_when_one_tile_and_has_no_seam_when_small(base):
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
    pixels = torch.stack([xx, yy, (xx + yy) / 2])[None]
    with torch.no_grad():
        latent, _ = encode_tiled(base.vae, pixels, tile_px=256, device=CPU.device, dtype=torch.float32)
        direct = base.vae.encode(pixels * 2 - 1).latent_dist.mean * base.vae.config.scaling_factor
        assert torch.allclose(latent, direct, atol=1e-5)
        decoded, info = decode_tiled(base.vae, latent, tile_px=256, dtype=torch.float32)
        direct_px = ((base.vae.decode(latent / base.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        assert info.fp32_retries == 0 and torch.allclose(decoded, direct_px, atol=1e-5)
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
    ("timestep", "refresh", "cfg_scale", "streams"),
    [(None, 1, 1.0, ("lr", "ref")), (300, 1, 1.0, ("lr", "ref")), (None, 1, 3.0, ("lr", "ref")), (300, 1, 3.0, ("lr", "ref")),
     (None, 1, 1.0, ("ref",)), (300, 1, 1.0, ()), (None, 2, 1.0, ("lr", "ref")), (None, 3, 3.0, ("ref",))],
)
def test_unet_rows_and_calls_match_the_guidance_schedule(base, scene, timestep, refresh, cfg_scale, streams):
    steps, tile_batch = 3, 4
    guidance = GuidanceSettings(streams, (0.0,) * len(streams), timestep=timestep, refresh=refresh)
    _, stats = _run(base, scene, steps=steps, strength=0.5, tile=16, overlap=8, tile_batch=tile_batch,
                    guidance=guidance, guidance_scale=cfg_scale)
    tiles, s, cfg = stats.tiles, len(streams), 2 if cfg_scale > 1 else 1
    batches = math.ceil(tiles / tile_batch)
    passes = guidance.passes(steps)  # guidance passes per tile
    assert stats.steps == steps
    assert stats.unet_rows == tiles * (steps * cfg + passes * s)
    separate = 1 if timestep is not None and s else 0  # cached: the guidance pass is its own call
    assert stats.unet_calls == batches * (steps + separate)
    assert (stats.guidance_cache_bytes > 0) == guidance.keeps_bank


def test_cached_guidance_at_the_current_timestep_equals_per_step(base, scene):
    """With one step and t_g equal to that step's timestep, cached K/V are exactly the per-step ones."""
    scheduler = make_scheduler("ddim", base.scheduler_config)
    first = int(plan_schedule(scheduler, 1, 0.5, CPU.device).timesteps[0])
    common = dict(steps=1, strength=0.5, tile=16, overlap=8, scheduler="ddim")
    a, _ = _run(base, scene, **common)
    b, stats = _run(base, scene, guidance=GuidanceSettings(timestep=first), **common)
    assert stats.guidance_cache_bytes > 0
    assert torch.allclose(a, b, atol=1e-5)


def test_refresh_every_step_equals_per_step_and_every_second_step_differs(base, scene):
    """Refresh 1 through a kept bank is per-step guidance; refresh 2 reuses stale K/V on odd steps."""
    common = dict(steps=3, strength=0.6, tile=16, overlap=8)
    per_step, _ = _run(base, scene, **common)
    refreshed, _ = _run(base, scene, guidance=GuidanceSettings(refresh=2), **common)
    assert (refreshed - per_step).abs().max() > 1e-4
    shifted_per_step, _ = _run(base, scene, shift=True, **common)
    shifted_refreshed, stats = _run(base, scene, shift=True, guidance=GuidanceSettings(refresh=2), **common)
    assert stats.guidance_cache_bytes > 0  # the canvas bank
    assert (shifted_refreshed - shifted_per_step).abs().max() > 1e-4
    assert (shifted_refreshed - per_step).abs().mean() < 0.5  # the same image (another seed: ≈ 2.7)


def test_same_seed_same_result_other_seed_differs(base, scene):
    common = dict(steps=2, strength=0.5, tile=16, overlap=8)
    a, _ = _run(base, scene, seed=3, **common)
    b, _ = _run(base, scene, seed=3, **common)
    c, _ = _run(base, scene, seed=4, **common)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


@pytest.mark.parametrize("scheduler", ["dpmpp-2m", "ddim", "euler", "euler-a", "unipc"])
def test_every_scheduler_runs_and_is_reproducible(base, scene, scheduler):
    common = dict(steps=2, strength=0.5, tile=24, overlap=8, scheduler=scheduler)
    a, _ = _run(base, scene, **common)
    b, _ = _run(base, scene, **common)
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_classifier_free_guidance_combines_uncond_and_cond_in_the_right_order(base, scene):
    """One DDIM step is linear in the prediction, so with CFG the result must be
    x_uncond + s·(x_cond − x_uncond), where x_cond / x_uncond are the CFG-free steps with each prompt."""
    emb = {p: encode_prompt(base, p, CPU.device) for p in ("", "a sharp photo", "blurry, noisy")}

    def one_step(text, scale):
        out, _ = _run(base, scene, steps=1, strength=0.6, tile=24, overlap=8, scheduler="ddim", text=text, guidance_scale=scale)
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
    out, _ = _run(base, scene, steps=10, strength=0.005, tile=24, overlap=8)
    assert torch.isfinite(out).all()


def test_prediction_type_comes_from_the_base_model(base):
    config = dict(base.scheduler_config, prediction_type="v_prediction")
    for name in ("dpmpp-2m", "ddim", "euler", "euler-a", "unipc"):
        assert make_scheduler(name, config).config.prediction_type == "v_prediction", name
