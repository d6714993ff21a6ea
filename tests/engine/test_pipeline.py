"""The whole cascade on tiny weights through the public pipeline API."""

from __future__ import annotations

import copy

import pytest
import torch

from cassr_cli.config import UpscaleConfig
from cassr_cli.engine.pipeline import CassrPipeline
from cassr_cli.engine.vae_tiling import decode_tiled, encode_tiled, latent_plan
from cassr_cli.errors import DeviceUnavailableError, ModelLoadError
from cassr_cli.testing.tiny_weights import write_base_model

SMALL = dict(
    steps=2,
    tile_size=128,
    tile_overlap=32,
    vae_tile_size=128,
    activation_tile_size=32,
    activation_tile_overlap=8,
)
PER_STEP = dict(SMALL, guidance_mode="per-step")  # the row arithmetic below is per-step guidance's


def _image(h: int = 40, w: int = 52, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _run(pipeline: CassrPipeline, image: torch.Tensor, size: tuple[int, int], seed: int = 0):
    return pipeline(image, out_size=size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def plain(tiny_weights):
    return CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), **PER_STEP))


def test_output_size_range_and_stats(plain):
    result = _run(plain, _image(37, 53), (93, 133))  # scale 2.5 of an odd-sized input
    assert result.image.shape == (1, 3, 93, 133)
    assert result.image.dtype == torch.float32 and result.image.min() >= 0.0 and result.image.max() <= 1.0
    for stage in ("activation", "encode", "denoise", "decode", "colorfix"):
        assert result.stats[stage]["seconds"] >= 0, stage
        assert "peak_memory_bytes" in result.stats[stage]
    assert result.stats["denoise"]["unet_rows"] == result.stats["denoise"]["tiles"] * 2 * 3


def test_same_seed_same_bytes_other_seed_differs(plain):
    image = _image()
    a, b, c = (_run(plain, image, (160, 208), seed=s).image for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-4


def test_tile_batch_changes_only_rounding(tiny_weights, plain):
    image = _image()
    reference = _run(plain, image, (160, 208)).image
    for tile_batch in (1, 3):
        other = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), tile_batch=tile_batch, **PER_STEP))
        assert (_run(other, image, (160, 208)).image - reference).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["per-step", "cached"])
def test_untrained_adapter_reproduces_the_zero_shot_model(tiny_weights, mode):
    common = dict(weights_dir=str(tiny_weights), guidance_mode=mode, **SMALL)
    without = CassrPipeline.from_config(UpscaleConfig(**common))
    with_adapter = CassrPipeline.from_config(UpscaleConfig(adapter="multiattn-adapter", **common))
    assert with_adapter.diffusion.adapter is not None
    image = _image()
    a, b = _run(without, image, (160, 208)).image, _run(with_adapter, image, (160, 208)).image
    assert (a - b).abs().max() < 1e-5


def test_zero_shot_defaults_to_cached_guidance_and_five_steps(tiny_weights):
    """The defaults the miniature's quality table chose (docs/decisions.md): guidance K/V once per tile."""
    defaults = UpscaleConfig()
    assert (defaults.steps, defaults.guidance_mode) == (5, "auto")
    small = {k: v for k, v in SMALL.items() if k != "steps"}
    pipeline = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), **small))
    result = _run(pipeline, _image(), (160, 208))
    assert result.stats["denoise"]["guidance_mode"] == "cached"
    tiles = result.stats["denoise"]["tiles"]
    assert result.stats["denoise"]["unet_rows"] == tiles * (5 + 2)  # 5 main rows + one lr and one ref row


def test_adapter_defaults_to_cached_guidance(tiny_weights):
    pipeline = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), adapter="multiattn-adapter", **SMALL))
    result = _run(pipeline, _image(), (160, 208))
    assert result.stats["denoise"]["guidance_mode"] == "cached"
    tiles = result.stats["denoise"]["tiles"]
    assert result.stats["denoise"]["unet_rows"] == tiles * (2 + 2)


def test_classifier_free_guidance_doubles_main_rows(tiny_weights):
    config = UpscaleConfig(
        weights_dir=str(tiny_weights), prompt="a photo", negative_prompt="blurry", guidance_scale=4.0, **PER_STEP
    )
    result = _run(CassrPipeline.from_config(config), _image(), (160, 208))
    tiles = result.stats["denoise"]["tiles"]
    assert result.stats["denoise"]["unet_rows"] == tiles * 2 * (2 + 2)
    assert torch.isfinite(result.image).all()


def test_stream_weights_change_the_result_and_zero_drops_the_stream(tiny_weights, plain):
    image = _image()
    base = _run(plain, image, (160, 208))
    weighted = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), ref_weight=3.0, **PER_STEP))
    assert (_run(weighted, image, (160, 208)).image - base.image).abs().max() > 1e-4
    no_lr = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), lr_weight=0.0, **PER_STEP))
    result = _run(no_lr, image, (160, 208))
    assert result.stats["denoise"]["streams"] == ["ref"]
    assert result.stats["denoise"]["unet_rows"] == result.stats["denoise"]["tiles"] * 2 * 2


def test_v_prediction_base_model_loads_and_runs(tiny_weights, tmp_path):
    folder = tmp_path / "sd2-v"
    write_base_model(folder, prediction_type="v_prediction")
    config = UpscaleConfig(weights_dir=str(tiny_weights), base_model=str(folder), **SMALL)
    pipeline = CassrPipeline.from_config(config)
    assert pipeline.diffusion.base.prediction_type == "v_prediction"
    assert torch.isfinite(_run(pipeline, _image(), (160, 208)).image).all()


def test_mismatched_adapter_is_refused(tiny_weights, tmp_path):
    from diffusers import UNet2DConditionModel

    from cassr_cli.models.adapter import MultiAttentionAdapter
    from cassr_cli.testing.tiny_weights import build_tiny_unet

    wider = UNet2DConditionModel.from_config({**build_tiny_unet().config, "block_out_channels": (32, 32, 64, 64)})
    path = tmp_path / "other.safetensors"
    MultiAttentionAdapter.for_unet(wider, rank=1, base_model="another-base").save(path)
    with pytest.raises(ModelLoadError, match="does not fit"):
        CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), adapter=str(path), **SMALL))


def test_xformers_requested_but_missing_is_an_environment_error(tiny_weights):
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    with pytest.raises(DeviceUnavailableError, match="xformers"):
        CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), attention="xformers", **SMALL))


@pytest.mark.parametrize("path", ["device", "host"])
def test_non_finite_half_precision_decode_is_retried_in_fp32(plain, path):
    """On the host path a bad tile must add nothing to the blended canvas before its retry is added."""
    from cassr_cli.engine.canvas import CanvasPlacement

    cpu = torch.device("cpu")
    placement = CanvasPlacement.device_path(cpu) if path == "device" else CanvasPlacement.host_path(cpu)
    vae = copy.deepcopy(plain.diffusion.base.vae)  # this test rounds and patches it
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    vae.to(torch.bfloat16).to(torch.float32)  # round the weights as a half-precision load would
    expected, _ = decode_tiled(vae, latent, tile_px=64, dtype=torch.float32)
    real_decode = vae.decode

    def overflowing_decode(z, *args, **kwargs):
        out = real_decode(z, *args, **kwargs)
        if z.dtype != torch.float32:  # what an fp16 overflow looks like
            out.sample[:, :, :2, :2] = float("nan")
        return out

    vae.decode = overflowing_decode
    try:
        with torch.no_grad():
            vae.to(torch.bfloat16)
            image, info = decode_tiled(vae, latent, tile_px=64, dtype=torch.bfloat16, placement=placement)
    finally:
        vae.to(torch.float32)
        del vae.decode  # drop the instance patch
    assert info.fp32_retries == len(latent_plan(16, 16, 64))  # every tile overflowed and was decoded again in fp32
    assert torch.isfinite(image).all()
    assert next(vae.parameters()).dtype == torch.float32  # cast back after the retry (and by us)
    assert torch.allclose(image, expected, atol=1e-5)  # exactly the fp32 decode of the same tiles


def test_non_finite_half_precision_encode_is_retried_in_fp32(plain):
    vae = copy.deepcopy(plain.diffusion.base.vae)
    pixels = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(2))
    vae.to(torch.bfloat16).to(torch.float32)  # round the weights as a half-precision load would
    expected, _ = encode_tiled(vae, pixels, tile_px=64, device=torch.device("cpu"), dtype=torch.float32)
    real_encode = vae.encode
    seen: list[torch.dtype] = []
    overflow = True

    def overflowing_encode(x, *args, **kwargs):
        seen.append(x.dtype)
        out = real_encode(x, *args, **kwargs)
        if overflow and x.dtype != torch.float32:  # what an fp16 overflow looks like
            out.latent_dist.mean[:, :, :1, :1] = float("inf")
        return out

    vae.encode = overflowing_encode
    try:
        with torch.no_grad():
            vae.to(torch.bfloat16)
            latent, info = encode_tiled(vae, pixels, tile_px=64, device=torch.device("cpu"), dtype=torch.bfloat16)
            overflow = False
            _, clean = encode_tiled(vae, pixels, tile_px=64, device=torch.device("cpu"), dtype=torch.bfloat16)
    finally:
        vae.to(torch.float32)
        del vae.encode
    tiles = len(latent_plan(16, 24, 64))
    assert info.tiles == tiles and info.fp32_retries == tiles and clean.fp32_retries == 0
    assert seen.count(torch.float32) == tiles  # each bad tile encoded once more, in fp32
    assert next(vae.parameters()).dtype == torch.float32  # cast back after the retry (and by us)
    assert torch.allclose(latent, expected, atol=1e-5)  # exactly the fp32 encode of the same tiles


@pytest.mark.parametrize("steps", [0, 2])
def test_device_path_equals_host_path(plain, tiny_weights, steps):
    """Canvases on the compute device (here the CPU) or staged through host buffers: the same image."""
    pipeline = plain if steps else CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), **{**SMALL, "steps": 0}))
    image = _image()
    results = {}
    for canvas in ("device", "host"):
        pipeline.canvas = canvas
        try:
            results[canvas] = _run(pipeline, image, (160, 208))
        finally:
            pipeline.canvas = "auto"
        assert results[canvas].stats["canvas"] == canvas
    assert (results["device"].image - results["host"].image).abs().max() < 1e-5
    assert results["device"].stats["activation"]["tiles"] > 1


def test_adapter_trained_on_one_stream_uses_only_that_stream(tiny_weights, tmp_path):
    from diffusers import UNet2DConditionModel

    from cassr_cli.models.adapter import MultiAttentionAdapter

    unet = UNet2DConditionModel.from_pretrained(str(tiny_weights / "sd21-base" / "unet"), variant="fp16")
    path = tmp_path / "ref-only.safetensors"
    MultiAttentionAdapter.for_unet(unet, rank=2, streams=("ref",)).save(path, mode="cached", guidance_timestep=200)
    pipeline = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), adapter=str(path), **SMALL))
    result = _run(pipeline, _image(), (160, 208))
    assert result.stats["denoise"]["streams"] == ["ref"]
    assert torch.isfinite(result.image).all()


def test_shallow_base_model_geometry(tmp_path, tiny_weights):
    """A base whose VAE down-samples ×4 and whose UNet down-samples twice (the miniature's shape): the
    engine reads both factors from the model, pads odd sizes to 16 pixels and crops back."""
    folder = tmp_path / "shallow"
    write_base_model(folder, levels=3)
    common = dict(weights_dir=str(tiny_weights), base_model=str(folder))
    config = UpscaleConfig(**common, **SMALL)
    reference_config = UpscaleConfig(**common, **{**SMALL, "tile_size": 512})
    pipeline = CassrPipeline.from_config(config)
    base = pipeline.diffusion.base
    assert (base.vae_factor, base.latent_multiple, base.pixel_align) == (4, 4, 16)
    image = _image(21, 27)
    result = _run(pipeline, image, (53, 67))
    assert result.image.shape == (1, 3, 53, 67)
    # 53×67 pads to 64×80 pixels: a 16×20 latent, cut into 128-px (32-latent) tiles → one tile
    assert result.stats["denoise"]["tiles"] == 1
    untiled = _run(CassrPipeline.from_config(reference_config), image, (53, 67))
    assert (result.image - untiled.image).abs().max() < 1e-5
    big = _run(pipeline, _image(70, 60), (175, 150))  # 176×160 px → 44×40 latent: several tiles
    assert big.image.shape == (1, 3, 175, 150)
    assert big.stats["denoise"]["tiles"] > 1


def test_bicubic_activation_is_the_resize_of_the_lr_stream_and_needs_no_model_file(tiny_weights, tmp_path):
    """``--activation bicubic`` (the ablation without activation): no model file is looked up, x_ref is
    ``resize_image`` of the input (the LR stream's image), and stage 2 runs on it."""
    from cassr_cli.engine.activation import resize_image
    from cassr_cli.engine.components import resolve_model_paths

    empty = tmp_path / "no-weights"
    empty.mkdir()
    assert resolve_model_paths(UpscaleConfig(activation="bicubic", steps=0, weights_dir=str(empty))).activation is None
    image = _image(24, 32)
    stage1 = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), **{**SMALL, "steps": 0}, activation="bicubic"))
    out = _run(stage1, image, (96, 128)).image
    torch.testing.assert_close(out, resize_image(image, 96, 128), rtol=0, atol=1e-6)
    cascade = CassrPipeline.from_config(UpscaleConfig(weights_dir=str(tiny_weights), **SMALL, activation="bicubic"))
    try:
        refined = _run(cascade, image, (96, 128)).image
    finally:
        cascade.close()
    assert refined.shape == out.shape and float((refined - out).abs().max()) > 1e-3
