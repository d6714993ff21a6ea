"""Image fidelity end to end, through `cassr upscale`: alpha (RGBA, LA, palette transparency) kept and free
of dark halos, 16-bit PNG/TIFF stay 16-bit, grayscale stays grayscale, CMYK becomes RGB, EXIF orientation
applied and EXIF carried (orientation 1, Make/Model kept), ICC profiles byte-exact, animated inputs refused
while the batch goes on.

Stage 1 (``--steps 0``) with the identity-like ×4 model (cli_support), and one batch through both stages
(``--steps 2``) with the tiny random weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_support import cassr, describe, json_lines, png16_ihdr, save_rgb, stdout_lines, write_identity_model
from PIL import Image, ImageCms, ImageDraw, ImageOps

MAKE, MODEL, ORIENTATION = 271, 272, 274


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def run(model: Path, *args: str | Path):  # noqa: ANN201
    return cassr(["upscale", *args, "--activation", model, "--steps", "0"])


def ok_single(result, dest: Path, name: str) -> Path:  # noqa: ANN001
    assert result.exit_code == 0, describe(result)
    out = dest / name
    assert stdout_lines(result) == [str(out)]
    return out


# --- alpha ------------------------------------------------------------------------------------------------


def disc_rgba(size: int = 24) -> Image.Image:
    """An opaque white disc on a fully transparent *black* background (hard edge)."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse((4, 4, size - 5, size - 5), fill=(255, 255, 255, 255))
    return im


def assert_no_dark_halo(rgb: np.ndarray, alpha: np.ndarray) -> None:
    """Where the output is partly transparent, its colour is the shape's (white), not the background's."""
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert edge.sum() > 20, "the test image should have a soft upscaled edge"
    darkest = float(rgb[edge].min())
    assert darkest > 0.9, f"dark halo: edge pixel colour down to {darkest:.3f} (white expected)"


@pytest.mark.parametrize("scale", ["4", "3"])
def test_rgba_alpha_kept_upscaled_and_without_dark_halo(tmp_path: Path, model: Path, scale: str) -> None:
    disc_rgba().save(tmp_path / "disc.png")
    out = ok_single(run(model, tmp_path / "disc.png", tmp_path / "out", "--scale", scale), tmp_path / "out", "disc.png")
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        side = 24 * int(scale)
        assert im.size == (side, side)
        arr = np.asarray(im).astype(np.float32) / 255
    rgb, alpha = arr[..., :3], arr[..., 3]
    assert alpha[0, 0] == 0 and alpha[side // 2, side // 2] == 1  # alpha really upscaled, not dropped
    assert_no_dark_halo(rgb, alpha)


def test_la_gray_alpha_kept(tmp_path: Path, model: Path) -> None:
    disc_rgba().convert("LA").save(tmp_path / "disc_la.png")
    out = ok_single(run(model, tmp_path / "disc_la.png", tmp_path / "out", "--scale", "3"), tmp_path / "out", "disc_la.png")
    with Image.open(out) as im:
        assert im.mode == "LA"
        assert im.size == (72, 72)
        arr = np.asarray(im).astype(np.float32) / 255
    assert_no_dark_halo(arr[..., :1], arr[..., 1])


def test_palette_transparency_becomes_alpha(tmp_path: Path, model: Path) -> None:
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    ImageDraw.Draw(im).rectangle((5, 5, 14, 14), fill=1)
    im.save(tmp_path / "pal.png", transparency=0)
    out = ok_single(run(model, tmp_path / "pal.png", tmp_path / "out"), tmp_path / "out", "pal.png")
    with Image.open(out) as result:
        assert result.mode == "RGBA"
        arr = np.asarray(result)
    assert arr[0, 0, 3] == 0 and arr[40, 40, 3] == 255
    edge = (arr[..., 3] > 12) & (arr[..., 3] < 243)
    assert edge.any()
    assert np.abs(arr[edge][:, :3].astype(int) - [200, 30, 30]).max() <= 3  # the shape's red, no black fringe


# --- bit depth, grayscale, CMYK -----------------------------------------------------------------------


def u16(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 65536, (h, w, c), dtype=np.uint16)
    assert np.mean(arr % 257 != 0) > 0.9
    return arr


def test_16bit_png_stays_16bit(tmp_path: Path, model: Path) -> None:
    import cv2

    src = u16(10, 14, 3)
    assert cv2.imwrite(str(tmp_path / "deep.png"), src[..., ::-1])  # OpenCV writes BGR
    assert png16_ihdr(tmp_path / "deep.png")[2:] == (16, 2)
    out = ok_single(run(model, tmp_path / "deep.png", tmp_path / "out"), tmp_path / "out", "deep.png")
    assert png16_ihdr(out) == (56, 40, 16, 2)
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert got.dtype == np.uint16
    assert np.mean(got % 257 != 0) > 0.9, "16-bit values went through 8 bits"
    assert np.array_equal(got, src.repeat(4, 0).repeat(4, 1))  # identity model: exact


def test_16bit_gray_png_stays_16bit_gray(tmp_path: Path, model: Path) -> None:
    src = u16(10, 14, 1)[..., 0]
    Image.fromarray(src).save(tmp_path / "gray16.png")
    assert png16_ihdr(tmp_path / "gray16.png")[2:] == (16, 0)
    out = ok_single(run(model, tmp_path / "gray16.png", tmp_path / "out"), tmp_path / "out", "gray16.png")
    assert png16_ihdr(out) == (56, 40, 16, 0)
    with Image.open(out) as im:
        got = np.asarray(im).astype(np.int64)
    assert np.mean(got % 257 != 0) > 0.9
    assert np.abs(got - src.repeat(4, 0).repeat(4, 1)).max() <= 1


def test_16bit_tiff_stays_16bit_tiff(tmp_path: Path, model: Path) -> None:
    src = u16(10, 14, 3, seed=1)
    tifffile.imwrite(tmp_path / "deep.tif", src, photometric="rgb")
    out = ok_single(run(model, tmp_path / "deep.tif", tmp_path / "out"), tmp_path / "out", "deep.tif")
    got = tifffile.imread(out)
    assert got.dtype == np.uint16 and got.shape == (40, 56, 3)
    assert np.mean(got % 257 != 0) > 0.9
    assert np.array_equal(got, src.repeat(4, 0).repeat(4, 1))


def test_16bit_png_to_tiff_keeps_16_bits(tmp_path: Path, model: Path) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "deep.png"), u16(8, 8, 3, seed=2))
    out = ok_single(
        run(model, tmp_path / "deep.png", tmp_path / "out", "--format", "tiff"), tmp_path / "out", "deep.tiff"
    )
    assert tifffile.imread(out).dtype == np.uint16


@pytest.mark.parametrize("name", ["gray.png", "gray.jpg"])
def test_grayscale_stays_grayscale(tmp_path: Path, model: Path, name: str) -> None:
    gray = np.random.default_rng(3).integers(0, 256, (12, 16), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / name, quality=95)
    out = ok_single(run(model, tmp_path / name, tmp_path / "out"), tmp_path / "out", name)
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (64, 48)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path, model: Path) -> None:
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # red
    out = ok_single(run(model, tmp_path / "cmyk.jpg", tmp_path / "out"), tmp_path / "out", "cmyk.jpg")
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.size == (64, 48)
        r, g, b = np.asarray(im).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60, (r, g, b)


# --- EXIF and ICC -----------------------------------------------------------------------------------------


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "TestMake"
    exif[MODEL] = "TestModel X"
    exif[ORIENTATION] = orientation
    return exif


def test_exif_orientation_applied_and_exif_carried_jpeg(tmp_path: Path, model: Path) -> None:
    save_rgb(tmp_path / "cam.jpg", h=12, w=20, exif=exif_with(6), quality=95)  # stored 20 wide × 12 high
    out = ok_single(run(model, tmp_path / "cam.jpg", tmp_path / "out"), tmp_path / "out", "cam.jpg")
    with Image.open(out) as im:
        assert im.size == (48, 80)  # displayed 12 wide × 20 high, ×4
        exif = im.getexif()
    assert exif.get(ORIENTATION, 1) == 1
    assert exif.get(MAKE) == "TestMake" and exif.get(MODEL) == "TestModel X"


def test_exif_orientation_pixels_png(tmp_path: Path, model: Path) -> None:
    src = save_rgb(tmp_path / "rot.png", h=6, w=10, exif=exif_with(6))
    out = ok_single(run(model, src, tmp_path / "out"), tmp_path / "out", "rot.png")
    with Image.open(src) as im:
        displayed = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    with Image.open(out) as im:
        got = np.asarray(im.convert("RGB"))
        assert im.getexif().get(ORIENTATION, 1) == 1
        assert im.getexif().get(MAKE) == "TestMake"
    assert np.array_equal(got, displayed.repeat(4, 0).repeat(4, 1))


@pytest.mark.parametrize(("name", "fmt"), [("p.png", "same"), ("p.jpg", "same"), ("p.png", "tiff"), ("p.png", "webp")])
def test_icc_profile_carried_byte_exact(tmp_path: Path, model: Path, name: str, fmt: str) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    save_rgb(tmp_path / name, icc_profile=icc, quality=95)
    result = run(model, tmp_path / name, tmp_path / "out", "--format", fmt)
    assert result.exit_code == 0, describe(result)
    (out,) = [Path(line) for line in stdout_lines(result)]
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc


# --- animated inputs --------------------------------------------------------------------------------------


def animated(path: Path, fmt: str) -> Path:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_animated_inputs_refused_batch_continues(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    animated(src / "anim.webp", "WEBP")
    animated(src / "apng.png", "PNG")
    animated(src / "pages.tiff", "TIFF")
    save_rgb(src / "good.png")
    result = run(model, src, tmp_path / "out", "--json")
    assert result.exit_code == 1, describe(result)
    records = {Path(r["input"]).name: r for r in json_lines(result)}
    assert records["good.png"]["status"] == "ok"
    for name in ("anim.webp", "apng.png", "pages.tiff"):
        assert records[name]["status"] == "failed"
        assert records[name]["error"].startswith("animated or multi-frame image (2 frames) is not supported")
        assert not (tmp_path / "out" / name).exists()
        lines = [line for line in result.stderr.splitlines() if line.startswith("failed:") and name in line]
        assert len(lines) == 1, result.stderr
    assert (tmp_path / "out" / "good.png").is_file()


# --- both stages --------------------------------------------------------------------------------------


def test_two_stages_keep_alpha_depth_and_gray(tmp_path: Path, tiny_weights: Path) -> None:
    import cv2

    src = tmp_path / "in"
    src.mkdir()
    disc_rgba(16).save(src / "a_rgba.png")
    cv2.imwrite(str(src / "b_deep.png"), u16(8, 12, 3))
    Image.fromarray(np.full((8, 8), 128, np.uint8), "L").save(src / "c_gray.png")
    result = cassr(
        ["upscale", src, tmp_path / "out", "--weights-dir", tiny_weights, "--steps", "2", "--seed", "1", "--json"]
    )
    assert result.exit_code == 0, describe(result)
    records = json_lines(result)
    assert [r["status"] for r in records] == ["ok"] * 3
    for record in records:
        assert {"activation", "encode", "denoise", "decode"} <= set(record["stats"])
        assert record["stats"]["denoise"]["steps"] == 2
    out = tmp_path / "out"
    with Image.open(out / "a_rgba.png") as im:
        assert im.mode == "RGBA" and im.size == (64, 64)
        alpha = np.asarray(im)[..., 3]
        assert alpha[0, 0] == 0 and alpha[32, 32] == 255
    assert png16_ihdr(out / "b_deep.png") == (48, 32, 16, 2)
    with Image.open(out / "c_gray.png") as im:
        assert im.mode == "L" and im.size == (32, 32)
