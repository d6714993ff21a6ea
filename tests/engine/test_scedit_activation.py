"""The SCEdit activation (stage 1 as a diffusion sample) on tiny weights: equivalence with an untiled loop
and, untrained, with the frozen base model; no seams; its own noise; OOM back-off; clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cassr_cli.engine.scedit_activation as act_mod
from cassr_cli.cli.app import app
from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.base_model import encode_prompt, load_base_model
from cassr_cli.engine.latent_tiles import TileSize
from cassr_cli.engine.pipeline import CassrPipeline, activation_generator
from cassr_cli.engine.scedit_activation import SCEditActivation, SCEditSettings
from cassr_cli.engine.schedulers import make_scheduler, plan_schedule
from cassr_cli.errors import ModelLoadError, TileOutOfMemoryError
from cassr_cli.models.scedit import SCEditTuner, TunedUNet
from cassr_cli.runtime.device import Runtime
from cassr_cli.testing.tiny_weights import write_base_model, write_scedit
from cassr_cli.tiling.plan import plan_tiles

CPU = Runtime(torch.device("cpu"), torch.float32)
SIZE = 48  # latent pixels: 384 output pixels on the ×8 tiny base
SETTINGS = SCEditSettings(steps=4, scheduler="dpmpp-2m", tile_size=SIZE * 8, tile_overlap=64, tile_batch=4, vae_tile_size=128)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tuner_file(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-looking tuner (every parameter perturbed) for the tiny SD 2.1-shaped base."""
    path = tmp_path_factory.mktemp("scedit") / "scedit.safetensors"
    write_scedit(path, tiny_weights / "sd21-base", perturb=0.05, seed=3)
    return path


@pytest.fixture(scope="module")
def stage(tiny_weights: Path, tuner_file: Path):
    base = load_base_model(tiny_weights / "sd21-base", CPU)
    tuner, _ = SCEditTuner.load(tuner_file)
    activation = SCEditActivation(base, tuner, CPU, SETTINGS)
    yield activation
    activation.close()


@pytest.fixture(scope="module")
def condition() -> torch.Tensor:
    """A smooth up-sampled 'LR image' (seams show on smooth content)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE * 8), torch.linspace(0, 1, SIZE * 8), indexing="ij")
    return torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(6 * xx * yy)])[None]


def _noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _untiled(unet_call, base, condition: torch.Tensor, noise: torch.Tensor, steps: int = 4) -> torch.Tensor:
    """The sampling loop written out without tiles: the reference for the engine."""
    scheduler = make_scheduler("dpmpp-2m", base.scheduler_config)
    schedule = plan_schedule(scheduler, steps, 1.0, CPU.device)
    latent = noise * scheduler.init_noise_sigma
    emb = encode_prompt(base, "", CPU.device)
    with torch.inference_mode():
        for t in schedule.timesteps:
            out = unet_call(scheduler.scale_model_input(latent, t), t, emb, condition)
            latent = scheduler.step(out.float(), t, latent).prev_sample
    return latent


def test_tile_covering_the_image_equals_an_untiled_loop(stage, condition):
    with torch.inference_mode():
        tiled, stats, _ = stage.sample(condition, _noise(), TileSize(SIZE * 8, 4), torch.Generator())
    assert stats.tiles == 1 and stats.unet_calls == 4 and stats.steps == 4
    reference = _untiled(stage.tuned, stage.base, condition, _noise())
    assert torch.allclose(tiled, reference, atol=1e-5), (tiled - reference).abs().max()
    plain = _untiled(lambda x, t, e, c: stage.base.unet(x, t, encoder_hidden_states=e).sample, stage.base, condition, _noise())
    assert (tiled - plain).abs().mean() > 1e-2  # the tuner (and so the condition) matters


def test_each_tile_sees_its_own_crop_of_the_condition(stage, condition, monkeypatch):
    """The tuner of a tile batch gets the condition pixels under exactly those latent tiles (×f)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = stage.tuned.forward

    def spy(sample, timestep, emb, cond, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.append((sample.clone(), cond.clone()))
        return real(sample, timestep, emb, cond, **kwargs)

    monkeypatch.setattr(stage.tuned, "forward", spy)
    stage.settings = dataclasses.replace(stage.settings, steps=1)
    try:
        with torch.inference_mode():
            stage.sample(condition, _noise(), TileSize(128, 3), torch.Generator())
    finally:
        stage.settings = SETTINGS
    plan = plan_tiles(SIZE, SIZE, 16, 8, 1, multiple=8)
    crops = torch.cat([c for _, c in seen])
    assert [len(s) for s, _ in seen] == [3] * 8 + [1]  # 25 tiles, 3 per call
    expected = torch.cat([condition[..., t.y0 * 8 : t.y1 * 8, t.x0 * 8 : t.x1 * 8] for t in plan])
    assert torch.equal(crops, expected)
    # ... next to the latent rows of the same tiles (the first step's input is the noise: DPM-Solver's
    # initial sigma is 1 and it does not scale its input)
    samples = torch.cat([s for s, _ in seen])
    assert torch.equal(samples, torch.cat([_noise()[..., t.y0 : t.y1, t.x0 : t.x1] for t in plan]))


def _seam_ratio(field: torch.Tensor, cuts: list[int]) -> float:
    """Mean |gradient| across the given column/row boundaries divided by the mean elsewhere (as in
    test_denoise.py)."""
    dx = (field[..., :, 1:] - field[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    dy = (field[..., 1:, :] - field[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    at = [c - 1 for c in cuts]
    rest = [c for c in range(dx.numel()) if c not in at]
    return max((dx[at].mean() / dx[rest].mean()).item(), (dy[at].mean() / dy[rest].mean()).item())


SEAM_THRESHOLD = 1.4


def test_small_tiles_leave_no_seam_where_naive_stitching_does(stage, condition):
    """The tiling error (tiled − untiled) is as smooth across tile boundaries as inside tiles when the
    predictions are blended at every step; sampling tiles independently and stitching them is not."""
    generator = torch.Generator()
    with torch.inference_mode():
        full, _, _ = stage.sample(condition, _noise(), TileSize(SIZE * 8, 4), generator)
        blended, stats, _ = stage.sample(condition, _noise(), TileSize(128, 4), generator)
        assert stats.tiles == 25  # 16-latent tiles, 8 overlap (SETTINGS: 64 px) over 48
        naive = torch.zeros_like(full)
        for y in range(0, SIZE, 16):
            for x in range(0, SIZE, 16):
                window = condition[..., y * 8 : (y + 16) * 8, x * 8 : (x + 16) * 8]
                naive[..., y : y + 16, x : x + 16] = stage.sample(window, _noise()[..., y : y + 16, x : x + 16], TileSize(128, 1), generator)[0]
    plan = plan_tiles(SIZE, SIZE, 16, 8, 1, multiple=8)
    edges = [e for e in sorted({t.x0 for t in plan} | {t.x1 for t in plan}) if 0 < e < SIZE]
    naive_ratio = _seam_ratio(naive - full, [16, 32])
    blended_ratio = _seam_ratio(blended - full, edges)
    assert naive_ratio > SEAM_THRESHOLD, f"the statistic must catch naive stitching ({naive_ratio:.2f})"
    assert blended_ratio < SEAM_THRESHOLD, f"seam ratio {blended_ratio:.2f}"


def test_untrained_tuner_through_the_pipeline_is_the_frozen_base_model(tiny_weights, tmp_path):
    """With a zero-initialised tuner, ``--activation tuner --steps 0`` gives exactly what the frozen base
    model samples from the same noise (written out here with the plain UNet and a direct VAE decode)."""
    path = tmp_path / "untrained.safetensors"
    write_scedit(path, tiny_weights / "sd21-base")
    config = UpscaleConfig(
        weights_dir=str(tiny_weights), activation=str(path), steps=0, activation_steps=3, tile_size=512, vae_tile_size=512
    )
    pipeline = CassrPipeline.from_config(config)
    assert isinstance(pipeline.activation, SCEditActivation) and pipeline.diffusion is None
    lr = torch.rand(1, 3, 15, 17, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(11)
    result = pipeline(lr, out_size=(60, 68), generator=generator)
    assert result.image.shape == (1, 3, 60, 68)
    stats = result.stats["activation"]
    assert stats["kind"] == "scedit" and stats["steps"] == 3 and stats["unet_calls"] == 3 and stats["seconds"] > 0

    base = pipeline.activation.base
    # 60×68 px are padded to 64×128 (the tiny base aligns to 64 px): an 8×16 latent
    noise = torch.randn(1, 4, 8, 16, generator=activation_generator(torch.Generator().manual_seed(11)))
    latent = _untiled(lambda x, t, e, c: base.unet(x, t, encoder_hidden_states=e).sample, base, None, noise, steps=3)
    with torch.inference_mode():
        decoded = base.vae.decode(latent / base.vae.config.scaling_factor).sample
    expected = ((decoded + 1) / 2).clamp(0, 1)[..., :60, :68]
    assert torch.allclose(result.image, expected, atol=1e-5), (result.image - expected).abs().max()
    pipeline.close()


def test_noise_is_the_images_own_and_distinct_from_stage_2(tiny_weights, tuner_file):
    config = UpscaleConfig(
        weights_dir=str(tiny_weights), activation=str(tuner_file), steps=1, activation_steps=2,
        tile_size=128, tile_overlap=32, vae_tile_size=128,
    )
    pipeline = CassrPipeline.from_config(config)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def run(seed: int):
        generator = torch.Generator().manual_seed(seed)
        result = pipeline(lr, out_size=(64, 64), generator=generator)
        return result, generator

    (a, gen_a), (b, _), (c, _) = run(5), run(5), run(6)
    assert torch.equal(a.image, b.image) and (a.image - c.image).abs().mean() > 1e-4
    # stage 1 drew from its own generator: stage 2 drew exactly what it draws after a spandrel activation
    fresh = torch.Generator().manual_seed(5)
    torch.randn(3, 1, 4, 8, 8, generator=fresh)  # stage 2's noise: start + lr + ref streams at 64×64 px
    assert torch.equal(gen_a.get_state(), fresh.get_state())
    assert activation_generator(torch.Generator().manual_seed(5)).initial_seed() != 5
    pipeline.close()


def test_oom_halves_the_tile_batch_and_matches_a_direct_run(tiny_weights, tuner_file, monkeypatch):
    """Out of memory in the sampling loop goes through the engine's one back-off: the stage runs again with
    half the tile batch (the same noise), and gives what a direct run at that batch gives."""
    config = UpscaleConfig(
        weights_dir=str(tiny_weights), activation=str(tuner_file), steps=0, activation_steps=2,
        tile_size=64, tile_overlap=32, tile_batch=4, vae_tile_size=128,
    )
    pipeline = CassrPipeline.from_config(config)
    stage1 = pipeline.activation
    lr = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    real = act_mod.sample
    batches: list[int] = []

    def flaky(denoiser, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        batches.append(len(denoiser.batches[0]))
        if batches[-1] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(denoiser, *args, **kwargs)

    monkeypatch.setattr(act_mod, "sample", flaky)
    retried, stats = stage1.activate(lr, out_size=(128, 192), generator=torch.Generator().manual_seed(7))
    assert batches == [4, 2, 1] and stats["oom_retries"] == 2 and stats["tile_batch"] == 1 and stats["tiles"] > 1
    monkeypatch.setattr(act_mod, "sample", real)
    stage1.settings = dataclasses.replace(stage1.settings, tile_batch=1)
    direct, direct_stats = stage1.activate(lr, out_size=(128, 192), generator=torch.Generator().manual_seed(7))
    assert direct_stats["oom_retries"] == 0 and torch.equal(retried, direct)

    def always(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(act_mod, "sample", always)
    with pytest.raises(TileOutOfMemoryError, match="stage 1 \\(SCEdit\\)"):
        stage1.activate(lr, out_size=(128, 192), generator=torch.Generator().manual_seed(7))
    pipeline.close()


def test_auto_tile_batch_takes_every_tile_when_memory_allows(tiny_weights, tuner_file):
    """``--tile-batch 0`` (auto): 4 per call off CUDA, every tile in one call given memory to spare, the
    image the same up to rounding."""
    config = UpscaleConfig(
        weights_dir=str(tiny_weights), activation=str(tuner_file), steps=0, activation_steps=2,
        tile_size=64, tile_overlap=32, tile_batch=0, vae_tile_size=128,
    )
    lr = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    results = {}
    for free in (None, 2**40):
        pipeline = CassrPipeline.from_config(config, Runtime(torch.device("cpu"), torch.float32, free_memory=free))
        results[free] = pipeline.activation.activate(lr, out_size=(128, 192), generator=torch.Generator().manual_seed(7))
        pipeline.close()
    (fixed, fixed_stats), (auto, auto_stats) = results[None], results[2**40]
    assert fixed_stats["tile_batch"] == 4 < auto_stats["tiles"] == auto_stats["tile_batch"]
    assert auto_stats["unet_calls"] == 2  # one call per step
    assert (auto - fixed).abs().max() < 1e-4


def _upscale(tmp_path: Path, tiny_weights: Path, *args: str):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    Image.new("RGB", (16, 12), (90, 120, 150)).save(src / "a.png")
    return CliRunner().invoke(app, ["upscale", str(src), str(tmp_path / "out"), "--weights-dir", str(tiny_weights), *args])


def test_a_safetensors_that_is_neither_spandrel_nor_scedit_is_refused_clearly(tmp_path, tiny_weights):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(other))
    result = _upscale(tmp_path, tiny_weights, "--activation", str(other), "--steps", "0")
    assert result.exit_code == 3, result.output
    assert "neither a spandrel model nor a cassr SCEdit tuner" in result.stderr and "Traceback" not in result.stderr
    adapter = tiny_weights / "multiattn-adapter" / "adapter.safetensors"
    result = _upscale(tmp_path, tiny_weights, "--activation", str(adapter))
    assert result.exit_code == 2 and "pass it with --adapter" in result.stderr


def test_a_tuner_made_for_another_base_is_refused_clearly(tmp_path, tiny_weights):
    shallow = tmp_path / "shallow-base"
    write_base_model(shallow, levels=3)
    tuner = tmp_path / "shallow.safetensors"
    write_scedit(tuner, shallow, base_model="shallow-base")
    for steps in ("0", "1"):  # the base is loaded for the tuner even without stage 2
        result = _upscale(tmp_path, tiny_weights, "--activation", str(tuner), "--steps", steps)
        assert result.exit_code == 3, result.output
        assert "was made for 'shallow-base' and does not fit this base model" in result.stderr
        assert "Traceback" not in result.stderr
    with pytest.raises(ModelLoadError, match="does not fit"):
        base = load_base_model(tiny_weights / "sd21-base", CPU)
        SCEditActivation(base, SCEditTuner.load(tuner)[0], CPU, SETTINGS)


def test_shallow_base_with_its_own_tuner_runs(tmp_path, tiny_weights):
    """A ×4 VAE with a two-down-sampling UNet (the miniature's geometry) and a tuner made for it."""
    shallow = tmp_path / "shallow-base"
    write_base_model(shallow, levels=3)
    tuner = tmp_path / "shallow.safetensors"
    write_scedit(tuner, shallow, perturb=0.05)
    config = UpscaleConfig(
        base_model=str(shallow), activation=str(tuner), steps=1, activation_steps=2, tile_size=64, tile_overlap=16,
        vae_tile_size=64, weights_dir=str(tiny_weights),
    )
    pipeline = CassrPipeline.from_config(config)
    result = pipeline(torch.rand(1, 3, 13, 19), out_size=(52, 76), generator=torch.Generator().manual_seed(0))
    assert result.image.shape == (1, 3, 52, 76) and torch.isfinite(result.image).all()
    assert result.stats["activation"]["tiles"] > 1
    assert isinstance(pipeline.activation.tuned, TunedUNet)
    pipeline.close()
