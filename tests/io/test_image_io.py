"""Image decoding/encoding fidelity and atomic writes (cassr_cli.io.image).

Every fixture is generated in tmp_path; the real-file tests at the end read ../shared/testdata and skip
when it is absent.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import PIL
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

from cassr_cli.errors import ImageTooLargeError, ImageWriteError, UnsupportedImageError
from cassr_cli.io import atomic as atomic_mod
from cassr_cli.io.image import (
    SUPPORTED_EXTENSIONS,
    DecodedImage,
    encode_image,
    probe_image,
    read_image,
    write_atomic,
)

SHARED_TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
BIG = 10**8
MAKE, MODEL, DATETIME, ORIENTATION = 271, 272, 306, 274
EXIF_IFD, DATETIME_ORIGINAL = 0x8769, 0x9003


# --- helpers --------------------------------------------------------------------------------------------


def shared(*parts: str) -> Path:
    path = SHARED_TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not available: {Path(*parts)}")
    return path


def u8_image(h: int = 16, w: int = 24, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def u16_image(h: int = 16, w: int = 24, c: int = 3, seed: int = 0) -> np.ndarray:
    """Random 16-bit values, most of them not multiples of 257 (so an 8-bit detour would show)."""
    arr = np.random.default_rng(seed).integers(0, 65536, (h, w, c), dtype=np.uint16)
    assert np.mean(arr % 257 != 0) > 0.9
    return arr


def save(im: Image.Image, path: Path, fmt: str | None = None, **options: object) -> Path:
    im.save(path, fmt, **options)
    return path


def read(path: Path, max_pixels: int = BIG) -> DecodedImage:
    return read_image(path, max_pixels=max_pixels)


def as_u8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255).astype(np.uint8)


def as_u16(x: np.ndarray) -> np.ndarray:
    return np.round(x * 65535).astype(np.uint16)


def encode_to(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None, **kw: object) -> Path:
    options: dict[str, object] = dict(
        fmt="png", bit_depth=8, is_gray=False, quality=95, icc_profile=None, exif=None
    )
    options.update(kw)
    path.write_bytes(encode_image(rgb, alpha, **options))  # type: ignore[arg-type]
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16_by_hand(arr: np.ndarray, extra_chunks: bytes = b"") -> bytes:
    """An independent minimal 16-bit PNG writer (filter 0) for fixtures OpenCV cannot write (gray+alpha)."""
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = arr.astype(">u2").reshape(h, -1).view(np.uint8)
    rows = np.concatenate([np.zeros((h, 1), np.uint8), raw], axis=1).tobytes()
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr
        + extra_chunks
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def write_png16(path: Path, arr: np.ndarray) -> Path:
    """16-bit PNG of ``arr [H, W, C]`` in RGB(A) order: OpenCV for 1/3/4 channels, by hand for 2."""
    if arr.shape[2] == 2:
        path.write_bytes(png16_by_hand(arr))
        return path
    bgr = arr[..., 0] if arr.shape[2] == 1 else arr[..., [2, 1, 0, *range(3, arr.shape[2])]]
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def fake_gray_icc() -> bytes:
    """Bytes that declare the GRAY colour space (only carried, never interpreted, by the code under test)."""
    data = bytearray(srgb_icc())
    data[16:20] = b"GRAY"
    return bytes(data)


def sample_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "Canon"
    exif[MODEL] = "EOS 5D"
    exif[DATETIME] = "2021:07:28 01:12:19"
    exif[ORIENTATION] = orientation
    exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = "2021:07:27 10:00:00"
    return exif


def s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def cmyk_icc_swapping_red_and_blue() -> bytes:
    """A real (LittleCMS-readable) CMYK → Lab ICC v2 profile with a 2-point lut8 A2B0 table.

    It maps CMYK to the colour of the naive formula with red and blue swapped, so a conversion that uses
    the profile is told apart from one that ignores it: pure cyan comes out yellow.
    """
    corners = list(itertools.product((0, 1), repeat=4))  # first input channel varies slowest
    rgb = np.array([[(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)] for c, m, y, k in corners])
    rgb_im = Image.fromarray(np.round(rgb[:, ::-1] * 255).astype(np.uint8)[None])
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = np.asarray(ImageCms.applyTransform(rgb_im, to_lab))[0]  # a, b as signed bytes
    ab = (lab[:, 1:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # ICC v2 8-bit Lab encoding
    clut = np.concatenate([lab[:, :1], ab], axis=1)
    ramp = bytes(range(256))
    identity = b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + clut.tobytes() + ramp * 3
    text = b"cassr test CMYK\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    white = s15(0.9642) + s15(1.0) + s15(0.8249)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + bytes(4) + white), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data))
        + bytes(4)
        + struct.pack(">I", 0x02100000)
        + b"prtr"
        + b"CMYK"
        + b"Lab "
        + bytes(12)
        + b"acsp"
        + bytes(24)
        + bytes(4)
        + white
        + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


# --- basics ---------------------------------------------------------------------------------------------


def test_supported_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".tif", ".tiff"} == SUPPORTED_EXTENSIONS


def test_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import cassr_cli.io.image, cassr_cli.io.alpha, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("fmt", "suffix", "options", "source_format"),
    [
        ("PNG", ".png", {}, "png"),
        ("TIFF", ".tif", {}, "tiff"),
        ("BMP", ".bmp", {}, "bmp"),
        ("WEBP", ".webp", {"lossless": True}, "webp"),
    ],
)
def test_8bit_rgb_lossless_formats_read_exactly(
    tmp_path: Path, fmt: str, suffix: str, options: dict[str, object], source_format: str
) -> None:
    arr = u8_image()
    img = read(save(Image.fromarray(arr), tmp_path / f"a{suffix}", fmt, **options))
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (16, 24, 3)
    assert (img.height, img.width) == (16, 24)
    np.testing.assert_array_equal(as_u8(img.rgb), arr)
    assert img.alpha is None and not img.is_gray and img.bit_depth == 8
    assert img.source_format == source_format
    assert img.icc_profile is None and img.exif is None


def test_jpeg_reads_as_jpg(tmp_path: Path) -> None:
    arr = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    img = read(save(Image.fromarray(arr), tmp_path / "a.jpg", quality=95))
    assert img.source_format == "jpg" and not img.is_gray
    assert np.abs(as_u8(img.rgb).astype(int) - arr).max() <= 3


@pytest.mark.parametrize(
    ("fmt", "suffix", "options"),
    [("png", ".png", {}), ("tiff", ".tif", {}), ("bmp", ".bmp", {}), ("webp", ".webp", {"quality": 100})],
)
def test_8bit_encode_read_round_trip_is_exact(
    tmp_path: Path, fmt: str, suffix: str, options: dict[str, object]
) -> None:
    arr = u8_image(seed=3)
    rgb = arr.astype(np.float32) / 255
    out = read(encode_to(tmp_path / f"o{suffix}", rgb, fmt=fmt, **options))
    np.testing.assert_array_equal(as_u8(out.rgb), arr)


# --- modes ----------------------------------------------------------------------------------------------


def test_rgba_png_has_alpha(tmp_path: Path) -> None:
    arr = u8_image(c=4)
    img = read(save(Image.fromarray(arr), tmp_path / "a.png"))
    np.testing.assert_array_equal(as_u8(img.rgb), arr[..., :3])
    assert img.alpha is not None and img.alpha.shape == (16, 24) and img.alpha.dtype == np.float32
    np.testing.assert_array_equal(as_u8(img.alpha), arr[..., 3])


def test_gray_png_is_gray_and_replicated(tmp_path: Path) -> None:
    arr = u8_image(c=1)[..., 0]
    img = read(save(Image.fromarray(arr), tmp_path / "g.png"))
    assert img.is_gray and img.alpha is None and img.rgb.shape == (16, 24, 3)
    for ch in range(3):
        np.testing.assert_array_equal(as_u8(img.rgb[..., ch]), arr)


def test_gray_alpha_png(tmp_path: Path) -> None:
    arr = u8_image(c=2)
    img = read(save(Image.fromarray(arr), tmp_path / "la.png"))
    assert img.is_gray and img.alpha is not None
    np.testing.assert_array_equal(as_u8(img.rgb[..., 1]), arr[..., 0])
    np.testing.assert_array_equal(as_u8(img.alpha), arr[..., 1])


def test_gray_with_trns_key_has_alpha(tmp_path: Path) -> None:
    arr = np.array([[0, 10], [20, 30]], np.uint8)
    img = read(save(Image.fromarray(arr), tmp_path / "l.png", transparency=10))
    assert img.is_gray and img.alpha is not None
    np.testing.assert_array_equal(img.alpha, [[1, 0], [1, 1]])


def test_one_bit_is_gray(tmp_path: Path) -> None:
    bits = np.zeros((8, 8), bool)
    bits[2:5, 3:6] = True
    img = read(save(Image.fromarray(bits), tmp_path / "b.png"))
    assert img.is_gray and img.bit_depth == 8
    np.testing.assert_array_equal(img.rgb[..., 0], bits.astype(np.float32))


def _palette_image(colors: list[tuple[int, int, int]], indices: np.ndarray) -> Image.Image:
    im = Image.new("P", indices.shape[::-1])
    im.putpalette([v for color in colors for v in color])
    im.frombytes(indices.astype(np.uint8).tobytes())
    return im


def test_palette_single_transparent_index(tmp_path: Path) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    indices = np.array([[0, 1, 2], [2, 1, 0]])
    img = read(save(_palette_image(colors, indices), tmp_path / "p.png", transparency=1))
    assert not img.is_gray and img.alpha is not None
    np.testing.assert_array_equal(img.alpha, (indices != 1).astype(np.float32))
    np.testing.assert_array_equal(as_u8(img.rgb[0, 0]), [255, 0, 0])
    np.testing.assert_array_equal(as_u8(img.rgb[0, 2]), [0, 0, 255])


def test_palette_per_entry_alpha(tmp_path: Path) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    indices = np.array([[0, 1, 2]])
    img = read(save(_palette_image(colors, indices), tmp_path / "p.png", transparency=bytes([255, 128, 0])))
    assert img.alpha is not None
    np.testing.assert_array_equal(as_u8(img.alpha), [[255, 128, 0]])


def test_palette_without_transparency_has_no_alpha(tmp_path: Path) -> None:
    img = read(save(_palette_image([(10, 20, 30), (40, 50, 60)], np.array([[0, 1]])), tmp_path / "p.png"))
    assert img.alpha is None and not img.is_gray
    np.testing.assert_array_equal(as_u8(img.rgb[0, 1]), [40, 50, 60])


def test_gray_palette_counts_as_gray(tmp_path: Path) -> None:
    gray = [(i, i, i) for i in range(256)]
    img = read(save(_palette_image(gray, np.array([[0, 5, 10, 200]])), tmp_path / "p.png", transparency=5))
    assert img.is_gray
    np.testing.assert_array_equal(as_u8(img.rgb[0, :, 0]), [0, 5, 10, 200])
    np.testing.assert_array_equal(img.alpha, [[1, 0, 1, 1]])


def test_pa_tiff_has_alpha(tmp_path: Path) -> None:
    im = Image.new("PA", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.frombytes(bytes([0, 255, 1, 100, 2, 0]))
    img = read(save(im, tmp_path / "pa.tif"))
    assert img.alpha is not None and not img.is_gray
    np.testing.assert_array_equal(as_u8(img.alpha), [[255, 100, 0]])
    np.testing.assert_array_equal(as_u8(img.rgb[0, 1]), [0, 255, 0])


def test_premultiplied_gray_alpha_is_unpremultiplied(tmp_path: Path) -> None:
    """TIFF gray + associated alpha opens as Pillow mode "La"; colour must come back straight."""
    arr = np.array([[[100, 128], [50, 255], [0, 0]]], np.uint8)  # premultiplied: 100/128 → 199
    tifffile.imwrite(tmp_path / "la.tif", arr, photometric="minisblack", extrasamples=(1,))
    if int(PIL.__version__.split(".")[0]) < 13:  # the pyproject floor admits these; they cannot open it
        with pytest.raises(UnsupportedImageError):
            read(tmp_path / "la.tif")
        pytest.skip(f"Pillow {PIL.__version__} cannot open gray + associated alpha TIFFs (13 can)")
    assert Image.open(tmp_path / "la.tif").mode == "La"
    img = read(tmp_path / "la.tif")
    assert img.is_gray and img.alpha is not None
    np.testing.assert_allclose(as_u8(img.rgb[0, :, 0]), [199, 50, 0], atol=1)
    np.testing.assert_array_equal(as_u8(img.alpha), [[128, 255, 0]])


def test_premultiplied_rgba_is_unpremultiplied(tmp_path: Path) -> None:
    arr = np.array([[[100, 50, 25, 128], [10, 20, 30, 255]]], np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", arr, photometric="rgb", extrasamples=(1,))
    img = read(tmp_path / "rgba.tif")
    np.testing.assert_allclose(as_u8(img.rgb[0, 0]), [199, 100, 50], atol=1)
    np.testing.assert_array_equal(as_u8(img.rgb[0, 1]), [10, 20, 30])


def test_i16_gray_png_stays_16_bit(tmp_path: Path) -> None:
    arr = u16_image(c=1)[..., 0]
    path = save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    img = read(path)
    assert img.is_gray and img.bit_depth == 16 and img.alpha is None
    np.testing.assert_array_equal(as_u16(img.rgb[..., 0]), arr)


def test_i32_tiff_is_16_bit_gray(tmp_path: Path) -> None:
    arr = np.array([[0, 1000, 65535, 70000, -5]], np.int32)
    path = save(Image.fromarray(arr), tmp_path / "i.tif")
    assert Image.open(path).mode == "I"
    img = read(path)
    assert img.is_gray and img.bit_depth == 16
    np.testing.assert_array_equal(as_u16(img.rgb[0, :, 0]), [0, 1000, 65535, 65535, 0])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.25, 1.0, -0.5], [0.0, 0.25, 1.0, 0.0]),
        ([0.0, 6553.5, 65535.0, 90000.0], [0.0, 0.1, 1.0, 1.0]),
    ],
)
def test_float_tiff_is_gray(tmp_path: Path, values: list[float], expected: list[float]) -> None:
    path = save(Image.fromarray(np.array([values], np.float32)), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    img = read(path)
    assert img.is_gray
    np.testing.assert_allclose(img.rgb[0, :, 0], expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["YCbCr", "LAB"])
def test_ycbcr_and_lab_become_rgb(tmp_path: Path, mode: str) -> None:
    source = Image.fromarray(u8_image(8, 8)).convert(mode)
    path = save(source, tmp_path / "x.tif")
    if Image.open(path).mode != mode:  # Pillow < 13 writes a YCbCr TIFF as RGB: nothing to convert then
        pytest.skip(f"Pillow {PIL.__version__} does not write {mode} TIFFs")
    assert Image.open(path).mode == mode
    img = read(path)
    assert not img.is_gray and img.icc_profile is None
    np.testing.assert_array_equal(as_u8(img.rgb), np.asarray(source.convert("RGB")))


def test_lab_white_is_white(tmp_path: Path) -> None:
    img = read(save(Image.new("LAB", (2, 2), (255, 128, 128)), tmp_path / "lab.tif"))
    assert img.rgb.min() > 0.98


# --- CMYK -----------------------------------------------------------------------------------------------


CMYK_PATCHES = bytes([255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 0, 255, 0, 0])  # cyan, white, black, magenta


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk_without_profile_uses_the_plain_formula(tmp_path: Path, suffix: str) -> None:
    im = Image.frombytes("CMYK", (4, 1), CMYK_PATCHES).resize((16, 4), Image.Resampling.NEAREST)
    img = read(
        save(im, tmp_path / f"c{suffix}", quality=100)
        if suffix == ".jpg"
        else save(im, tmp_path / f"c{suffix}")
    )
    expected = np.array([[0, 255, 255], [255, 255, 255], [0, 0, 0], [255, 0, 255]])
    got = as_u8(img.rgb[1, 2::4]).astype(int)  # patch centres
    assert np.abs(got - expected).max() <= 12
    assert img.icc_profile is None and not img.is_gray


def test_cmyk_with_profile_is_converted_through_it(tmp_path: Path) -> None:
    profile = cmyk_icc_swapping_red_and_blue()
    im = Image.frombytes("CMYK", (4, 1), CMYK_PATCHES)
    img = read(save(im, tmp_path / "c.tif", icc_profile=profile))
    got = as_u8(img.rgb[0]).astype(int)
    # cyan → yellow (the profile swaps red and blue); white, black and magenta are symmetric
    expected = np.array([[255, 255, 0], [255, 255, 255], [0, 0, 0], [255, 0, 255]])
    assert np.abs(got - expected).max() <= 12, got
    assert img.icc_profile is None  # never a CMYK profile on RGB pixels


def test_cmyk_with_broken_profile_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    im = Image.frombytes("CMYK", (4, 1), CMYK_PATCHES)
    with caplog.at_level(logging.WARNING):
        img = read(save(im, tmp_path / "c.tif", icc_profile=b"not a profile" * 20))
    assert img.icc_profile is None
    np.testing.assert_array_equal(as_u8(img.rgb[0, 0]), [0, 255, 255])
    assert "ICC" in caplog.text


# --- 16 bit ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_reads_exactly(tmp_path: Path, channels: int) -> None:
    arr = u16_image(c=channels, seed=channels)
    img = read(write_png16(tmp_path / "a.png", arr))
    assert img.bit_depth == 16
    assert img.is_gray == (channels <= 2)
    color = img.rgb[..., :1] if channels <= 2 else img.rgb
    np.testing.assert_array_equal(as_u16(color), arr[..., : 1 if channels <= 2 else 3])
    if channels in (2, 4):
        assert img.alpha is not None
        np.testing.assert_array_equal(as_u16(img.alpha), arr[..., -1])
    else:
        assert img.alpha is None


def test_16bit_rgb_png_with_trns_colour_key(tmp_path: Path) -> None:
    arr = np.zeros((2, 3, 3), np.uint16)
    arr[0, 1] = (1000, 2000, 3000)
    trns = png_chunk(b"tRNS", struct.pack(">HHH", 1000, 2000, 3000))
    (tmp_path / "k.png").write_bytes(png16_by_hand(arr, trns))
    img = read(tmp_path / "k.png")
    assert img.bit_depth == 16 and img.alpha is not None
    np.testing.assert_array_equal(img.alpha, [[1, 0, 1], [1, 1, 1]])


def test_pillow_alone_would_lose_the_16_bits(tmp_path: Path) -> None:
    """Guards the reason for the OpenCV path: if Pillow ever keeps 16 bits, this documents it."""
    arr = u16_image()
    path = write_png16(tmp_path / "a.png", arr)
    assert Image.open(path).mode == "RGB"  # 8 bits per channel in Pillow
    assert read(path).bit_depth == 16


@pytest.mark.parametrize(("fmt", "suffix"), [("png", ".png"), ("tiff", ".tif")])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_round_trip_is_exact(tmp_path: Path, fmt: str, suffix: str, channels: int) -> None:
    arr = u16_image(c=channels, seed=10 + channels)
    first = read(write_png16(tmp_path / "in.png", arr))
    out = tmp_path / f"out{suffix}"
    encode_to(out, first.rgb, first.alpha, fmt=fmt, bit_depth=16, is_gray=first.is_gray)
    second = read(out)
    gray_alpha_tiff = fmt == "tiff" and channels == 2  # documented: written as RGBA (Pillow cannot open GA16)
    assert second.bit_depth == 16 and second.is_gray == (first.is_gray and not gray_alpha_tiff)
    np.testing.assert_array_equal(second.rgb, first.rgb)
    if first.alpha is None:
        assert second.alpha is None
    else:
        np.testing.assert_array_equal(second.alpha, first.alpha)
    np.testing.assert_array_equal(
        as_u16(second.rgb[..., : 1 if channels <= 2 else 3]), arr[..., : 1 if channels <= 2 else 3]
    )


@pytest.mark.parametrize(("channels", "color_type"), [(1, 0), (2, 4), (3, 2), (4, 6)])
def test_16bit_png_output_is_really_16_bit(tmp_path: Path, channels: int, color_type: int) -> None:
    arr = u16_image(c=channels)
    img = read(write_png16(tmp_path / "in.png", arr))
    data = encode_image(
        img.rgb,
        img.alpha,
        fmt="png",
        bit_depth=16,
        is_gray=img.is_gray,
        quality=95,
        icc_profile=None,
        exif=None,
    )
    assert data[24] == 16 and data[25] == color_type  # IHDR bit depth and colour type


def test_16bit_tiff_planar_separate(tmp_path: Path) -> None:
    arr = u16_image(c=3)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(arr, -1, 0), photometric="rgb", planarconfig="separate")
    img = read(tmp_path / "p.tif")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(as_u16(img.rgb), arr)


@pytest.mark.parametrize(("extrasample", "has_alpha"), [(0, False), (1, True), (2, True)])
def test_16bit_tiff_extra_samples(tmp_path: Path, extrasample: int, has_alpha: bool) -> None:
    color = np.full((4, 4, 3), 20000, np.uint16)
    alpha = np.full((4, 4, 1), 32768, np.uint16)
    tifffile.imwrite(
        tmp_path / "a.tif", np.concatenate([color, alpha], 2), photometric="rgb", extrasamples=(extrasample,)
    )
    img = read(tmp_path / "a.tif")
    assert (img.alpha is not None) == has_alpha
    expected = 20000 / 32768 if extrasample == 1 else 20000 / 65535  # associated alpha: unpremultiplied
    np.testing.assert_allclose(img.rgb, expected, atol=1e-4)


def test_16bit_lzw_tiff_is_decoded(tmp_path: Path) -> None:
    """LZW is the usual 16-bit TIFF compression; tifffile needs imagecodecs for it, OpenCV does not."""
    arr = u16_image(c=3)
    ok, buf = cv2.imencode(".tiff", arr[..., ::-1])  # OpenCV writes LZW
    assert ok
    (tmp_path / "lzw.tif").write_bytes(buf.tobytes())
    assert Image.open(tmp_path / "lzw.tif").tag_v2[259] == 5
    img = read(tmp_path / "lzw.tif")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(as_u16(img.rgb), arr)


@pytest.mark.parametrize("fmt", ["jpg", "webp", "bmp"])
def test_16bit_request_for_8bit_format_gives_8_bits(fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    rgb = u16_image(8, 8).astype(np.float32) / 65535
    with caplog.at_level(logging.INFO, logger="cassr_cli.io.image"):
        data = encode_image(
            rgb, None, fmt=fmt, bit_depth=16, is_gray=False, quality=100, icc_profile=None, exif=None
        )
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    assert "8 bits" in caplog.text


# --- grayscale output -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "bit_depth", "alpha", "mode"),
    [
        ("png", 8, False, "L"),
        ("png", 8, True, "LA"),
        ("png", 16, False, "I;16"),
        ("tiff", 8, False, "L"),
        ("tiff", 8, True, "LA"),
        ("jpg", 8, False, "L"),
        ("bmp", 8, False, "L"),
    ],
)
def test_gray_in_gray_out(fmt: str, bit_depth: int, alpha: bool, mode: str) -> None:
    gray = u8_image(8, 8, 1)[..., 0].astype(np.float32) / 255
    rgb = np.repeat(gray[..., None], 3, axis=2)
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8) if alpha else None
    data = encode_image(
        rgb, a, fmt=fmt, bit_depth=bit_depth, is_gray=True, quality=100, icc_profile=None, exif=None
    )
    im = Image.open(io.BytesIO(data))
    assert im.mode == mode
    if fmt != "jpg":
        values = np.asarray(im)[..., 0] if alpha else np.asarray(im)
        scale = 65535 if bit_depth == 16 else 255
        np.testing.assert_array_equal(values, np.round(gray * scale))


def test_gray_output_uses_601_luma() -> None:
    rgb = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.4, 0.6]]], np.float32)
    data = encode_image(
        rgb, None, fmt="png", bit_depth=8, is_gray=True, quality=95, icc_profile=None, exif=None
    )
    expected = np.round(255 * (rgb @ np.array([0.299, 0.587, 0.114])))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)


def test_gray_webp_is_stored_as_rgb_gray() -> None:
    rgb = np.repeat(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4, 1), 3, axis=2)
    rgb[0, 0] = (1, 0, 0)
    data = encode_image(
        rgb, None, fmt="webp", bit_depth=8, is_gray=True, quality=100, icc_profile=None, exif=None
    )
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2])


# --- ICC ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "bit_depth", "suffix"),
    [
        ("png", 8, ".png"),
        ("png", 16, ".png"),
        ("jpg", 8, ".jpg"),
        ("webp", 8, ".webp"),
        ("tiff", 8, ".tif"),
        ("tiff", 16, ".tif"),
    ],
)
def test_icc_profile_carried_byte_exactly(tmp_path: Path, fmt: str, bit_depth: int, suffix: str) -> None:
    profile = srgb_icc()
    source = save(Image.fromarray(u8_image()), tmp_path / "in.png", icc_profile=profile)
    img = read(source)
    assert img.icc_profile == profile
    out = encode_to(
        tmp_path / f"out{suffix}", img.rgb, fmt=fmt, bit_depth=bit_depth, icc_profile=img.icc_profile
    )
    assert Image.open(out).info.get("icc_profile") == profile
    assert read(out).icc_profile == profile


def test_icc_profile_from_16bit_png_input(tmp_path: Path) -> None:
    profile = srgb_icc()
    iccp = png_chunk(b"iCCP", b"test\x00\x00" + zlib.compress(profile))
    (tmp_path / "a.png").write_bytes(png16_by_hand(u16_image(c=3), iccp))
    img = read(tmp_path / "a.png")
    assert img.bit_depth == 16 and img.icc_profile == profile


def test_gray_profile_carried_on_gray_output(tmp_path: Path) -> None:
    profile = fake_gray_icc()
    img = read(save(Image.fromarray(u8_image(c=1)[..., 0]), tmp_path / "g.png", icc_profile=profile))
    assert img.is_gray and img.icc_profile == profile
    for fmt in ("png", "jpg", "tiff"):
        data = encode_image(
            img.rgb, None, fmt=fmt, bit_depth=8, is_gray=True, quality=90, icc_profile=profile, exif=None
        )
        assert Image.open(io.BytesIO(data)).info.get("icc_profile") == profile


def test_profile_of_the_wrong_colour_space_is_not_attached(caplog: pytest.LogCaptureFixture) -> None:
    rgb = np.zeros((4, 4, 3), np.float32)
    with caplog.at_level(logging.WARNING):
        data = encode_image(
            rgb,
            None,
            fmt="png",
            bit_depth=8,
            is_gray=False,
            quality=90,
            icc_profile=fake_gray_icc(),
            exif=None,
        )
    assert "icc_profile" not in Image.open(io.BytesIO(data)).info
    assert "ICC" in caplog.text


def test_bmp_carries_no_metadata(caplog: pytest.LogCaptureFixture) -> None:
    rgb = np.zeros((4, 4, 3), np.float32)
    with caplog.at_level(logging.DEBUG, logger="cassr_cli.io.metadata"):
        data = encode_image(
            rgb,
            None,
            fmt="bmp",
            bit_depth=8,
            is_gray=False,
            quality=90,
            icc_profile=srgb_icc(),
            exif=sample_exif().tobytes(),
        )
    assert Image.open(io.BytesIO(data)).format == "BMP"
    assert "BMP cannot carry" in caplog.text


# --- EXIF orientation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path: Path, orientation: int) -> None:
    arr = u8_image(6, 10)
    path = save(Image.fromarray(arr), tmp_path / "o.png", exif=sample_exif(orientation).tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    img = read(path)
    np.testing.assert_array_equal(as_u8(img.rgb), expected)
    assert probe_image(path) == expected.shape[:2]


def _red_corner(h: int, w: int) -> np.ndarray:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # stored top-left
    return arr


@pytest.mark.parametrize(("orientation", "corner"), [(6, (0, -1)), (8, (-1, 0)), (3, (-1, -1)), (1, (0, 0))])
def test_orientation_moves_the_corner_pixel(
    tmp_path: Path, orientation: int, corner: tuple[int, int]
) -> None:
    """6 = rotate 90° clockwise to display: stored top-left ends top-right. 8 = counter-clockwise: bottom-left."""
    path = save(
        Image.fromarray(_red_corner(4, 6)),
        tmp_path / "o.jpg",
        quality=100,
        exif=sample_exif(orientation).tobytes(),
    )
    img = read(path)
    swapped = orientation in (6, 8)
    assert (img.height, img.width) == ((6, 4) if swapped else (4, 6))
    assert probe_image(path) == (img.height, img.width)
    red = img.rgb[..., 0] - img.rgb[..., 1]
    assert np.unravel_index(np.argmax(red), red.shape) == tuple(
        c % s for c, s in zip(corner, red.shape, strict=True)
    )


@pytest.mark.parametrize("orientation", [6, 8])
def test_orientation_applies_on_the_16bit_png_path(tmp_path: Path, orientation: int) -> None:
    arr = np.zeros((4, 6, 3), np.uint16)
    arr[0, 0] = (65535, 1, 1)
    exif = png_chunk(b"eXIf", sample_exif(orientation).tobytes()[6:])
    (tmp_path / "o.png").write_bytes(png16_by_hand(arr, exif))
    img = read(tmp_path / "o.png")
    assert img.bit_depth == 16 and (img.height, img.width) == (6, 4)
    expected = (0, 3) if orientation == 6 else (5, 0)
    assert np.unravel_index(np.argmax(img.rgb[..., 0]), (6, 4)) == expected
    assert img.exif is not None and Image.Exif().load(img.exif) is None


@pytest.mark.parametrize("orientation", [6, 8])
def test_orientation_applies_on_the_16bit_tiff_path(tmp_path: Path, orientation: int) -> None:
    arr = np.zeros((4, 6, 3), np.uint16)
    arr[0, 0] = (65535, 1, 1)
    tifffile.imwrite(tmp_path / "o.tif", arr, photometric="rgb", extratags=[(274, "H", 1, orientation, True)])
    img = read(tmp_path / "o.tif")
    assert (img.height, img.width) == (6, 4)
    expected = (0, 3) if orientation == 6 else (5, 0)
    assert np.unravel_index(np.argmax(img.rgb[..., 0]), (6, 4)) == expected
    assert img.exif is not None
    exif = Image.Exif()
    exif.load(img.exif)
    assert exif[ORIENTATION] == 1 and 273 not in exif  # no pixel-layout tags carried


# --- EXIF carried ---------------------------------------------------------------------------------------


def test_carried_exif_is_the_input_with_orientation_reset(tmp_path: Path) -> None:
    raw = sample_exif(6).tobytes()
    img = read(save(Image.fromarray(u8_image()), tmp_path / "a.jpg", exif=raw))
    assert img.exif is not None and len(img.exif) == len(raw)
    differing = [i for i, (x, y) in enumerate(zip(img.exif, raw, strict=True)) if x != y]
    assert len(differing) == 1 and raw[differing[0]] == 6 and img.exif[differing[0]] == 1


@pytest.mark.parametrize(
    ("fmt", "bit_depth", "suffix", "sub_ifd_kept"),
    [
        ("jpg", 8, ".jpg", True),
        ("png", 8, ".png", True),
        ("png", 16, ".png", True),
        ("webp", 8, ".webp", True),
        ("tiff", 8, ".tif", False),  # documented: compressed TIFFs get the IFD0 tags, not the sub-IFDs
        ("tiff", 16, ".tif", False),
    ],
)
def test_exif_tags_survive_with_orientation_reset(
    tmp_path: Path, fmt: str, bit_depth: int, suffix: str, sub_ifd_kept: bool
) -> None:
    img = read(save(Image.fromarray(u8_image(8, 12)), tmp_path / "in.jpg", exif=sample_exif(6).tobytes()))
    assert (img.height, img.width) == (12, 8)
    out = encode_to(tmp_path / f"out{suffix}", img.rgb, fmt=fmt, bit_depth=bit_depth, exif=img.exif)
    exif = Image.open(out).getexif()
    assert (exif[MAKE], exif[MODEL], exif[DATETIME]) == ("Canon", "EOS 5D", "2021:07:28 01:12:19")
    assert exif.get(ORIENTATION, 1) == 1
    assert (exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) == "2021:07:27 10:00:00") == sub_ifd_kept
    again = read(out)
    assert (again.height, again.width) == (12, 8)  # not rotated a second time


def test_exif_from_webp_without_prefix(tmp_path: Path) -> None:
    img = read(
        save(
            Image.fromarray(u8_image(8, 12)),
            tmp_path / "a.webp",
            lossless=True,
            exif=sample_exif(8).tobytes(),
        )
    )
    assert (img.height, img.width) == (12, 8)
    assert img.exif is not None and img.exif.startswith(b"Exif\x00\x00")


def test_exif_from_tiff_input_keeps_descriptive_tags_only(tmp_path: Path) -> None:
    exif = sample_exif(1)
    img = read(save(Image.fromarray(u8_image()), tmp_path / "a.tif", exif=exif.tobytes()))  # uncompressed
    assert img.exif is not None
    carried = Image.Exif()
    carried.load(img.exif)
    assert carried[MAKE] == "Canon" and carried.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] == "2021:07:27 10:00:00"
    assert not {256, 257, 273, 279} & set(carried)


def test_no_exif_gives_none(tmp_path: Path) -> None:
    assert read(save(Image.fromarray(u8_image()), tmp_path / "a.jpg")).exif is None


# --- refusals -------------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(UnsupportedImageError, match="empty file"):
        read(tmp_path / "e.png")
    with pytest.raises(UnsupportedImageError, match="empty file"):
        probe_image(tmp_path / "e.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedImageError, match="cannot read"):
        read(tmp_path / "nope.png")


def test_garbage_with_png_extension(tmp_path: Path) -> None:
    (tmp_path / "g.png").write_bytes(os.urandom(2000))
    with pytest.raises(UnsupportedImageError, match="not a recognised image"):
        read(tmp_path / "g.png")


def test_other_image_formats_are_not_opened(tmp_path: Path) -> None:
    save(Image.fromarray(u8_image()), tmp_path / "a.png", "PPM")
    with pytest.raises(UnsupportedImageError, match="not a recognised image"):
        read(tmp_path / "a.png")


@pytest.mark.parametrize(
    ("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".tif", "TIFF")]
)
def test_truncated_files(tmp_path: Path, suffix: str, fmt: str) -> None:
    good = save(Image.fromarray(u8_image(64, 64)), tmp_path / f"good{suffix}", fmt)
    data = good.read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedImageError, match="corrupt or truncated"):
        read(tmp_path / f"cut{suffix}")


def test_truncated_16bit_png(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = write_png16(tmp_path / "good.png", u16_image(64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedImageError, match="truncated"):
        read(tmp_path / "cut.png")
    assert "libpng" not in capfd.readouterr().err


def test_header_only_png_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IEND", b""))
    limit_before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        read(tmp_path / "bomb.png", max_pixels=50_000_000)
    assert time.perf_counter() - start < 1.0
    assert "100000×100000" in str(info.value) and "--max-pixels" in (info.value.hint or "")
    assert limit_before == Image.MAX_IMAGE_PIXELS
    assert probe_image(tmp_path / "bomb.png") == (100_000, 100_000)


def test_lowered_max_pixels(tmp_path: Path) -> None:
    path = save(Image.fromarray(u8_image(16, 24)), tmp_path / "a.png")
    with pytest.raises(ImageTooLargeError):
        read(path, max_pixels=16 * 24 - 1)
    assert read(path, max_pixels=16 * 24).width == 24


@pytest.mark.parametrize("suffix", [".png", ".gif", ".tif", ".jpg"])
def test_our_limit_replaces_pillows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """A user who raises --max-pixels opens images beyond Pillow's own bomb limit; the limit is restored."""
    path = save(Image.fromarray(u8_image(64, 64)), tmp_path / f"a{suffix}")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would raise DecompressionBombError
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert read(path, max_pixels=64 * 64).width == 64
    assert probe_image(path) == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_concurrent_reads_restore_pillows_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [save(Image.fromarray(u8_image(64, 64, seed=i)), tmp_path / f"{i}.tif") for i in range(16)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with ThreadPoolExecutor(8) as pool:
        widths = list(pool.map(lambda p: read(p).width, paths * 4))
    assert widths == [64] * 64
    assert Image.MAX_IMAGE_PIXELS == 100


def _frames(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(n)]


@pytest.mark.parametrize(
    ("suffix", "fmt"), [(".gif", "GIF"), (".png", "PNG"), (".webp", "WEBP"), (".tif", "TIFF")]
)
def test_multi_frame_images_are_refused(tmp_path: Path, suffix: str, fmt: str) -> None:
    first, *rest = _frames(3)
    path = save(first, tmp_path / f"anim{suffix}", fmt, save_all=True, append_images=rest)
    with pytest.raises(UnsupportedImageError, match=r"animated or multi-frame image \(3 frames\).*ffmpeg"):
        read(path)


def test_single_frame_gif_reads(tmp_path: Path) -> None:
    img = read(save(Image.new("RGB", (8, 8), (255, 0, 0)), tmp_path / "a.gif"))
    assert img.source_format == "png" and img.rgb[0, 0, 0] == 1.0


def test_mpo_reads_the_primary_picture(tmp_path: Path) -> None:
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    path = save(first, tmp_path / "a.jpg", "MPO", save_all=True, append_images=[second])
    assert Image.open(path).format == "MPO"
    img = read(path)
    assert img.source_format == "jpg" and img.rgb[4, 4, 0] > 0.9 and img.rgb[4, 4, 2] < 0.1


# --- encoding options -----------------------------------------------------------------------------------


def test_jpeg_quality_and_chroma_subsampling() -> None:
    rgb = u8_image(32, 32).astype(np.float32) / 255
    encoded = {
        q: encode_image(
            rgb, None, fmt="jpg", bit_depth=8, is_gray=False, quality=q, icc_profile=None, exif=None
        )
        for q in (50, 89, 90)
    }
    assert len(encoded[50]) < len(encoded[89])
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(encoded[90]))) == 0  # 4:4:4
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(encoded[89]))) == 2  # 4:2:0


def test_jpeg_alpha_is_composited_on_white(caplog: pytest.LogCaptureFixture) -> None:
    rgb = np.zeros((8, 8, 3), np.float32)
    alpha = np.ones((8, 8), np.float32)
    alpha[:, 4:] = 0
    with caplog.at_level(logging.WARNING):
        data = encode_image(
            rgb, alpha, fmt="jpg", bit_depth=8, is_gray=False, quality=95, icc_profile=None, exif=None
        )
    arr = np.asarray(Image.open(io.BytesIO(data)))
    assert arr[:, :3].max() < 20 and arr[:, 5:].min() > 235
    assert "transparency" in caplog.text


def test_bmp_alpha_is_composited_on_white() -> None:
    rgb = np.zeros((4, 4, 3), np.float32)
    data = encode_image(
        rgb,
        np.zeros((4, 4), np.float32),
        fmt="bmp",
        bit_depth=8,
        is_gray=False,
        quality=95,
        icc_profile=None,
        exif=None,
    )
    assert np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).min() == 255


def test_webp_lossless_at_100_keeps_alpha_and_lossy_below() -> None:
    arr = u8_image(16, 16, 4)
    rgb, alpha = arr[..., :3].astype(np.float32) / 255, arr[..., 3].astype(np.float32) / 255
    lossless = encode_image(
        rgb, alpha, fmt="webp", bit_depth=8, is_gray=False, quality=100, icc_profile=None, exif=None
    )
    lossy = encode_image(
        rgb, alpha, fmt="webp", bit_depth=8, is_gray=False, quality=80, icc_profile=None, exif=None
    )
    back = np.asarray(Image.open(io.BytesIO(lossless)))
    np.testing.assert_array_equal(back[..., 3], arr[..., 3])
    visible = arr[..., 3] > 0
    np.testing.assert_array_equal(back[..., :3][visible], arr[..., :3][visible])
    assert Image.open(io.BytesIO(lossy)).mode == "RGBA"
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(lossy)))[..., :3], arr[..., :3])


def test_tiff_outputs_are_deflate_compressed() -> None:
    rgb = np.zeros((8, 8, 3), np.float32)
    for depth in (8, 16):
        data = encode_image(
            rgb, None, fmt="tiff", bit_depth=depth, is_gray=False, quality=95, icc_profile=None, exif=None
        )
        assert Image.open(io.BytesIO(data)).tag_v2[259] == 8  # Adobe deflate


def test_out_of_range_and_nan_are_clipped() -> None:
    rgb = np.array([[[-0.5, 1.5, np.nan]]], np.float32)
    data = encode_image(
        rgb, None, fmt="png", bit_depth=8, is_gray=False, quality=95, icc_profile=None, exif=None
    )
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)))[0, 0], [0, 255, 0])


@pytest.mark.parametrize(
    ("rgb", "alpha", "kw", "match"),
    [
        (np.zeros((4, 4, 3), np.float32), None, {"fmt": "gif"}, "unknown output format"),
        (np.zeros((4, 4), np.float32), None, {}, "expected an RGB array"),
        (np.zeros((4, 4, 3), np.float32), np.zeros((2, 2), np.float32), {}, "alpha shape"),
        (np.zeros((4, 4, 3), np.float32), None, {"quality": 0}, "quality"),
        (np.zeros((1, 16384, 3), np.float32), None, {"fmt": "webp"}, "at most 16383"),
    ],
)
def test_bad_encode_arguments(
    rgb: np.ndarray, alpha: np.ndarray | None, kw: dict[str, object], match: str
) -> None:
    options: dict[str, object] = dict(
        fmt="png", bit_depth=8, is_gray=False, quality=90, icc_profile=None, exif=None
    )
    options.update(kw)
    with pytest.raises(ImageWriteError, match=match):
        encode_image(rgb, alpha, **options)  # type: ignore[arg-type]


# --- atomic write ---------------------------------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".cassr-partial"))


def test_write_atomic_writes_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    write_atomic(target, b"hello")
    assert target.read_bytes() == b"hello" and _leftovers(target.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_atomic_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"


def test_write_atomic_keyboard_interrupt_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def interrupted_fsync(fd: int) -> None:
        seen.extend(_leftovers(tmp_path))  # the partial file exists while writing
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_mod.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "out.png", b"x" * 1000)
    assert len(seen) == 1 and seen[0].startswith(".out.png.")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_failure_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_mod.os, "fsync", disk_full)
    with pytest.raises(ImageWriteError, match="No space left on device") as info:
        write_atomic(target, b"new bytes")
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"precious" and _leftovers(tmp_path) == []


def test_write_atomic_unwritable_parent(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ImageWriteError, match="cannot write"):
        write_atomic(tmp_path / "file" / "out.png", b"x")


# --- real files from ../shared/testdata -----------------------------------------------------------------


def test_real_16bit_rgba_png() -> None:
    path = shared("realesrgan_edgecases", "tree_alpha_16bit.png")
    img = read(path)
    assert img.bit_depth == 16 and img.alpha is not None and not img.is_gray
    values = as_u16(img.rgb)
    assert np.any(values % 257 != 0)
    reduced = np.asarray(Image.open(path).convert("RGBA"))  # Pillow's 8-bit view of the same pixels
    assert np.abs(as_u8(img.rgb).astype(int) - reduced[..., :3]).max() <= 1
    assert img.icc_profile is not None and img.icc_profile == Image.open(path).info["icc_profile"]


def test_real_orientation_6_jpeg_matches_the_upright_original() -> None:
    rotated = shared("pillow", "hopper_orientation_6.jpg")
    upright = np.asarray(Image.open(shared("pillow", "hopper.png")).convert("RGB")).astype(np.float32) / 255
    stored = np.asarray(Image.open(rotated).convert("RGB")).astype(np.float32) / 255
    img = read(rotated)
    np.testing.assert_array_equal(as_u8(img.rgb), as_u8(np.rot90(stored, k=-1)))  # 90° clockwise
    error = np.abs(img.rgb - upright).mean()
    assert error < 0.05
    assert error < np.abs(stored - upright).mean() / 3  # the stored (unrotated) pixels are far off
    assert img.exif is not None and Image.Exif().load(img.exif) is None


def test_real_gray_jpeg_with_profile(tmp_path: Path) -> None:
    path = shared("realesrgan_edgecases", "wolf_gray.jpg")
    img = read(path)
    assert img.is_gray and img.icc_profile is not None and img.icc_profile[16:20] == b"GRAY"
    out = encode_to(
        tmp_path / "out.jpg", img.rgb, fmt="jpg", is_gray=True, icc_profile=img.icc_profile, exif=img.exif
    )
    again = Image.open(out)
    assert again.mode == "L" and again.info["icc_profile"] == img.icc_profile


def test_real_cmyk_jpeg_is_plausible_rgb() -> None:
    """The sample is red "RED" lettering with a red corner patch on black (checked by eye)."""
    img = read(shared("pillow", "pil_sample_cmyk.jpg"))
    assert img.rgb.shape == (100, 100, 3) and not img.is_gray and img.icc_profile is None
    r, g, b = img.rgb[0, 0]
    assert r > 0.8 and g < 0.2 and b < 0.2
    assert np.mean(img.rgb.max(axis=2) < 0.1) > 0.5  # mostly black background, not inverted white
