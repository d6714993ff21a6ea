"""The Python API: ``Upscaler`` takes the config's options with the config's validation, accepts paths, PIL
images and numpy arrays, returns what ``cassr upscale`` writes (compared with the real command), keeps
16-bit and alpha, returns the ``--json`` objects for batches, and loads its models once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_support import cassr, describe, save_rgb, write_identity_model
from PIL import Image

from cassr_cli import UpscaleConfig, Upscaler
from cassr_cli.errors import ConfigError
from cassr_cli.io.image import encode_image, read_image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


@pytest.fixture
def up(model: Path) -> Upscaler:
    return Upscaler(steps=0, activation=str(model), scale=2, device="cpu")


def command_output(src: Path, out: Path, model: Path, *extra: str) -> Path:
    result = cassr(["upscale", src, out, "--activation", model, "--steps", "0", "--scale", "2", "--device", "cpu", *extra])
    assert result.exit_code == 0, describe(result)
    return Path(result.stdout.splitlines()[0])


def write_png16(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None, gray: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(rgb, alpha, fmt="png", bit_depth=16, is_gray=gray, quality=95, icc_profile=None, exif=None))
    return path


def test_a_path_gives_what_the_command_writes(tmp_path: Path, up: Upscaler, model: Path) -> None:
    src = save_rgb(tmp_path / "in" / "photo.png", h=12, w=16, seed=3)
    result = up(src)
    assert isinstance(result, Image.Image) and result.mode == "RGB" and result.size == (32, 24)
    written = Image.open(command_output(src, tmp_path / "out", model))
    assert np.array_equal(np.asarray(result), np.asarray(written))  # same pixels, same seed key (the name)


def test_pil_and_numpy_inputs_match_the_file(tmp_path: Path, up: Upscaler) -> None:
    src = save_rgb(tmp_path / "photo.png", seed=4)
    from_path = np.asarray(up(src))
    with Image.open(src) as im:
        assert np.array_equal(np.asarray(up(im)), from_path)
        pixels = np.asarray(im)
    assert np.array_equal(np.asarray(up(pixels)), from_path)  # uint8 [H, W, 3]
    floats = up(pixels.astype(np.float32) / 255, output_type="np")  # float [0, 1]: a 16-bit image
    assert floats.dtype == np.uint16 and floats.shape == (24, 32, 3)
    assert np.abs(floats.astype(np.int64) // 257 - from_path.astype(np.int64)).max() <= 1


def test_sixteen_bit_colour_is_kept_in_arrays_and_matches_the_command(tmp_path: Path, up: Upscaler, model: Path) -> None:
    rng = np.random.default_rng(5)
    src = write_png16(tmp_path / "in" / "deep.png", rng.random((10, 14, 3), dtype=np.float32))
    pixels = up(src, output_type="np")
    assert pixels.dtype == np.uint16 and pixels.shape == (20, 28, 3)
    assert len(np.unique(pixels)) > 256  # more levels than 8 bits could hold
    written = read_image(command_output(src, tmp_path / "out", model), max_pixels=10**8)
    assert written.bit_depth == 16
    assert np.array_equal(np.round(written.rgb * 65535).astype(np.uint16), pixels)
    assert up(src).mode == "RGB"  # Pillow has no 16-bit colour mode: 8 bits in a PIL image (documented)


def test_sixteen_bit_gray_stays_sixteen_bit_gray(tmp_path: Path, up: Upscaler) -> None:
    ramp = np.linspace(0, 65535, 12 * 16).reshape(12, 16).astype(np.uint16)
    result = up(ramp)
    assert result.mode == "I;16" and result.size == (32, 24)
    assert len(np.unique(np.asarray(result))) > 256
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(gray16)
    assert up(gray16).mode == "I;16"


def test_alpha_is_kept_like_the_command(tmp_path: Path, up: Upscaler, model: Path) -> None:
    rng = np.random.default_rng(6)
    rgba = rng.integers(0, 256, (12, 16, 4), dtype=np.uint8)
    rgba[:6, :, 3], rgba[6:, :, 3] = 0, 255  # a transparent half
    src = tmp_path / "in" / "cutout.png"
    src.parent.mkdir()
    Image.fromarray(rgba, "RGBA").save(src)
    result = up(Image.fromarray(rgba, "RGBA"))
    assert result.mode == "RGBA" and result.size == (32, 24)
    alpha = np.asarray(result)[..., 3]
    assert alpha[:8].max() == 0 and alpha[16:].min() > 200  # resized with the image (edges blend)
    written = Image.open(command_output(src, tmp_path / "out", model))
    assert written.mode == "RGBA" and np.array_equal(np.asarray(up(src)), np.asarray(written))
    gray_alpha = up(rgba[..., [0, 3]])  # [H, W, 2]: gray + alpha
    assert gray_alpha.mode == "LA"


def test_bad_arrays_are_refused_clearly(up: Upscaler) -> None:
    with pytest.raises(ValueError, match=r"expected an array \[H, W\]"):
        up(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(TypeError, match="uint8, uint16 or float"):
        up(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="NaN"):
        up(np.full((4, 4), np.nan, np.float32))


def test_options_are_the_config_with_its_validation(model: Path) -> None:
    up = Upscaler(scale=3, steps=0, seed=7)
    assert up.config == UpscaleConfig(scale=3, steps=0, seed=7)
    with pytest.raises(ConfigError) as from_api:
        Upscaler(scale=20)
    with pytest.raises(ConfigError) as from_config:
        UpscaleConfig(scale=20)
    assert str(from_api.value) == str(from_config.value) and "scale" in str(from_api.value)
    with pytest.raises(TypeError):
        Upscaler(sclae=2)
    assert Upscaler(UpscaleConfig(scale=2), steps=0).config.scale == 2


def test_upscale_files_returns_the_json_objects_of_the_command(tmp_path: Path, up: Upscaler, model: Path) -> None:
    src = tmp_path / "in"
    save_rgb(src / "a.png", seed=1)
    save_rgb(src / "b.jpg", seed=2)
    (src / "broken.png").write_bytes(b"not an image")
    results = up.upscale_files([src], tmp_path / "api-out")
    command = cassr(["upscale", src, tmp_path / "cli-out", "--json", "--activation", model, "--steps", "0", "--scale", "2"])
    expected = [json.loads(line) for line in command.stdout.splitlines()]
    assert [(r["input"], r["status"], r["error"]) for r in results] == [(e["input"], e["status"], e["error"]) for e in expected]
    assert [r["output"] for r in results] == [e["output"] and e["output"].replace("cli-out", "api-out") for e in expected]
    assert set(results[0]) == set(expected[0])
    assert json.loads(json.dumps(results)) == results  # plain JSON data


def test_models_load_once_per_upscaler(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cassr_cli.engine.pipeline import CassrPipeline

    loads: list[UpscaleConfig] = []
    real = CassrPipeline.from_config.__func__  # type: ignore[attr-defined]

    def counting(cls: type, config: UpscaleConfig, *args: object) -> CassrPipeline:
        loads.append(config)
        return real(cls, config, *args)

    monkeypatch.setattr(CassrPipeline, "from_config", classmethod(counting))
    up = Upscaler(steps=0, activation=str(model), scale=2)
    assert loads == []  # nothing loads before the first image
    src = save_rgb(tmp_path / "in" / "a.png")
    up(src)
    up(np.zeros((8, 8, 3), np.uint8))
    up.upscale_files([src], tmp_path / "out")
    assert len(loads) == 1
    Upscaler(steps=0, activation=str(model), scale=2)(src)
    assert len(loads) == 2  # another Upscaler, its own models
