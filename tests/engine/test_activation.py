"""Stage 1 (engine/activation.py): tiling invariants, sizes, resizing to --scale, and out-of-memory back-off
(stage 1 and stage 2), including through the command, where an image that cannot fit fails alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cassr_cli.cli.app import app
from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.activation import MIN_TILE, ActivationStage
from cassr_cli.engine.diffusion import DiffusionStage
from cassr_cli.engine.pipeline import CassrPipeline
from cassr_cli.errors import TileOutOfMemoryError
from cassr_cli.runner import output_size
from cassr_cli.runtime.device import Runtime

CPU = Runtime(torch.device("cpu"), torch.float32)


def image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def colour_map_then_nearest(scale: int):  # noqa: ANN201
    """An 'identity-like' model: a per-pixel colour map, then nearest-neighbour ×scale."""

    def model(x: torch.Tensor) -> torch.Tensor:
        y = 0.25 + 0.5 * x.flip(1) ** 2  # channel swap and a non-linear map, still per pixel
        return F.interpolate(y, scale_factor=scale, mode="nearest")

    return model


def stage(model, *, scale: int = 4, tile: int = 256, overlap: int = 32, batch: int = 1) -> ActivationStage:  # noqa: ANN001
    return ActivationStage(
        model, scale=scale, runtime=CPU, dtype=torch.float32, tile_size=tile, tile_overlap=overlap, tile_batch=batch
    )


# --- tiling invariants --------------------------------------------------------------------------------


@pytest.mark.parametrize(("tile", "overlap"), [(32, 0), (32, 8), (48, 16), (64, 32), (40, 200)])
@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_identity_like_model_equals_untiled(tile: int, overlap: int, scale: int) -> None:
    model = colour_map_then_nearest(scale)
    x = image(75, 61)
    out, stats = stage(model, scale=scale, tile=tile, overlap=overlap)(x)
    expected = model(x)
    assert out.shape == expected.shape == (1, 3, 75 * scale, 61 * scale)
    assert stats.tiles > 1 and stats.tile_size == tile
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def tiny_esrgan(seed: int = 0) -> torch.nn.Module:
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).eval()


def test_tile_covering_the_image_equals_untiled_real_conv_net() -> None:
    net = tiny_esrgan()
    x = image(32, 48)  # multiples of 8: no padding
    with torch.inference_mode():
        expected = net(x).clamp(0, 1)
    out, stats = stage(net, tile=64, overlap=16)(x)
    assert stats.tiles == 1
    assert torch.equal(out, expected)


def test_small_tiles_on_a_real_conv_net_stay_close_to_untiled() -> None:
    net = tiny_esrgan()
    x = image(48, 56)
    with torch.inference_mode():
        expected = net(x).clamp(0, 1)
    out, stats = stage(net, tile=32, overlap=16)(x)
    assert stats.tiles > 1
    # the receptive field is wider than the overlap's flat part, so not bit-equal; no seams though
    assert (out - expected).abs().mean() < 2e-3


def test_loaded_model_file_tile_covering_the_image_equals_untiled(tiny_weights: Path) -> None:
    (path,) = (tiny_weights / "realesrgan-x4plus").glob("*.pth")
    loaded = ActivationStage.from_file(path, CPU, tile_size=256, tile_overlap=32)
    assert loaded.scale == 4 and loaded.dtype is torch.float32
    x = image(24, 40)
    with torch.inference_mode():
        expected = loaded.model(x).clamp(0, 1)
    out, _ = loaded(x)
    assert torch.equal(out, expected)


@pytest.mark.parametrize(("h", "w"), [(37, 53), (1, 1), (7, 100), (9, 9)])
def test_odd_sizes_give_exactly_size_times_scale(h: int, w: int) -> None:
    out, _ = stage(tiny_esrgan(), tile=32, overlap=8)(image(h, w))
    assert out.shape == (1, 3, h * 4, w * 4)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("scale", [1.0, 2.0, 3.0, 2.5, 8.0])
def test_resize_from_native_x4_to_any_scale(scale: float) -> None:
    pipeline = CassrPipeline(stage(colour_map_then_nearest(4), tile=32, overlap=8))
    size = output_size(37, 53, scale)
    assert abs(size[0] - 37 * scale) <= 0.5 and abs(size[1] - 53 * scale) <= 0.5
    result = pipeline(image(37, 53), out_size=size)
    assert result.image.shape == (1, 3, *size)
    assert float(result.image.min()) >= 0 and float(result.image.max()) <= 1
    if scale == 4.0:
        assert torch.equal(result.image, colour_map_then_nearest(4)(image(37, 53)))


def test_resize_is_antialiased_when_shrinking_from_native() -> None:
    """A ×4 checkerboard brought down to ×1 averages out (antialiased), instead of aliasing."""
    checker = (torch.arange(64).view(1, -1) + torch.arange(64).view(-1, 1)) % 2
    x = checker.float().expand(1, 3, 64, 64).contiguous()
    result = CassrPipeline(stage(lambda t: F.interpolate(t, scale_factor=4, mode="nearest")))(x, out_size=(16, 16))
    assert (result.image - 0.5).abs().max() < 0.1


# --- out of memory ----------------------------------------------------------------------------------


class OomAbove:
    """Raises a CUDA-style OOM for tiles with more than ``limit`` pixels on a side; else nearest ×4."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        if self.limit is None or max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return colour_map_then_nearest(4)(x)


def test_oom_halves_the_tile_until_it_fits() -> None:
    model = OomAbove(limit=40)
    x = image(90, 70)
    out, stats = stage(model, tile=128, overlap=16)(x)
    assert stats.oom_retries == 2 and stats.tile_size == 32  # 128 → 64 → 32
    assert max(max(s) for s in model.sizes[-stats.tiles :]) <= 32
    torch.testing.assert_close(out, colour_map_then_nearest(4)(x), atol=1e-6, rtol=0)


def test_oom_halves_the_tile_batch_first_and_batching_changes_nothing() -> None:
    model = OomAbove(limit=40)
    x = image(90, 70)
    batched, stats = stage(model, tile=32, overlap=8, batch=4)(x)
    assert stats.tiles > 4 and stats.tile_batch == 4 and stats.oom_retries == 0
    one, _ = stage(model, tile=32, overlap=8, batch=1)(x)
    torch.testing.assert_close(batched, one, atol=1e-6, rtol=0)

    def oom_for_batches(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return colour_map_then_nearest(4)(x)

    out, stats = stage(oom_for_batches, tile=32, overlap=8, batch=4)(x)
    assert stats.oom_retries == 2 and stats.tile_batch == 1 and stats.tile_size == 32  # batch 4 → 2 → 1
    torch.testing.assert_close(out, one, atol=1e-6, rtol=0)


def test_oom_error_text_from_other_backends_is_recognised() -> None:
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[-1])
        if x.shape[-1] > 32:
            raise RuntimeError("MPS backend out of memory (simulated)")
        return F.interpolate(x, scale_factor=4, mode="nearest")

    _, stats = stage(model, tile=64, overlap=8)(image(64, 64))
    assert stats.oom_retries == 1 and stats.tile_size == 32


def test_always_oom_fails_the_image_clearly() -> None:
    with pytest.raises(TileOutOfMemoryError, match=f"even with {MIN_TILE}-pixel tiles") as info:
        stage(OomAbove(limit=None), tile=128, overlap=16)(image(64, 64))
    assert info.value.hint and "--device cpu" in info.value.hint


def test_other_errors_are_not_retried() -> None:
    def model(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        stage(model, tile=64)(image(16, 16))


def test_oom_through_the_command_fails_that_image_and_the_batch_goes_on(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    real_run = ActivationStage._run

    def run(self, x, size, placement, progress):  # noqa: ANN001, ANN202
        if x.shape[-1] == 20:  # the 20-pixel-wide image never fits
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(self, x, size, placement, progress)

    monkeypatch.setattr(ActivationStage, "_run", run)
    src = tmp_path / "in"
    src.mkdir()
    for name, width in (("a.png", 16), ("b.png", 20), ("c.png", 16)):
        Image.new("RGB", (width, 12), (90, 120, 150)).save(src / name)
    result = CliRunner().invoke(
        app, ["upscale", str(src), str(tmp_path / "out"), "--weights-dir", str(tiny_weights), "--steps", "0"]
    )
    assert result.exit_code == 1, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "c.png")]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert str(src / "b.png") in line and "out of device memory in stage 1" in line
    assert "Traceback" not in result.stderr


# --- stage 2 out of memory --------------------------------------------------------------------------


def test_stage2_oom_halves_the_tile_batch_and_matches_a_direct_run(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = UpscaleConfig(
        weights_dir=str(tiny_weights), steps=1, tile_size=64, tile_overlap=32, tile_batch=4, vae_tile_size=128
    )
    stage2 = CassrPipeline.from_config(config).diffusion
    assert stage2 is not None
    lr = image(16, 24, seed=3)
    reference = F.interpolate(lr, size=(64, 96), mode="bicubic", align_corners=False).clamp(0, 1)

    real_denoise = DiffusionStage._denoise
    batches: list[int] = []

    def flaky_denoise(self, g_ref, guides, guidance, size, generator, progress):  # noqa: ANN001, ANN202
        batches.append(size.batch)
        if size.batch > 1:
            torch.randn(3, generator=generator)  # a failed attempt may have drawn noise already
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_denoise(self, g_ref, guides, guidance, size, generator, progress)

    monkeypatch.setattr(DiffusionStage, "_denoise", flaky_denoise)
    retried, stats = stage2(lr, reference, generator=torch.Generator().manual_seed(7))
    assert batches == [4, 2, 1]
    assert stats["denoise"]["oom_retries"] == 2 and stats["denoise"]["tile_batch"] == 1
    assert stats["denoise"]["tiles"] > 1

    monkeypatch.setattr(DiffusionStage, "_denoise", real_denoise)
    stage2.settings = dataclasses.replace(stage2.settings, tile_batch=1)
    direct, direct_stats = stage2(lr, reference, generator=torch.Generator().manual_seed(7))
    assert direct_stats["denoise"]["oom_retries"] == 0
    assert torch.equal(retried, direct)


def test_stage2_always_oom_fails_clearly(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = UpscaleConfig(weights_dir=str(tiny_weights), steps=1, tile_size=256, tile_batch=2, vae_tile_size=128)
    stage2 = CassrPipeline.from_config(config).diffusion
    assert stage2 is not None

    def always(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(DiffusionStage, "_denoise", always)
    lr = image(16, 16)
    with pytest.raises(TileOutOfMemoryError, match="stage 2"):
        stage2(lr, F.interpolate(lr, size=(64, 64)), generator=torch.Generator().manual_seed(0))
