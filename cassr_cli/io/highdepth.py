"""16-bit PNG and TIFF: decoding and encoding that keep 16 bits per channel.

Why not Pillow alone: Pillow silently reduces 16-bit colour PNGs (RGB, RGBA, and gray+alpha) to 8 bits, so
those are decoded with OpenCV (the bit depth comes from the IHDR chunk, :func:`png_header`); 16-bit gray
PNGs stay with Pillow (``I;16``). 16-bit unsigned gray/RGB TIFFs are decoded with tifffile, or with OpenCV
when tifffile lacks the codec (e.g. LZW without ``imagecodecs``).

Writing: 16-bit PNGs go through OpenCV with ``iCCP``/``eXIf`` chunks inserted right after IHDR (gray+alpha,
which OpenCV cannot write, is assembled here); 16-bit TIFFs through tifffile (deflate, unassociated alpha),
carrying the ICC profile and, of EXIF, only the descriptive IFD0 tags. A 16-bit gray+alpha TIFF is written
as RGBA (Pillow, and so cassr's reader, cannot open 16-bit gray+alpha TIFFs).

:class:`Pixels` and :func:`key_color_alpha` are shared with the 8-bit Pillow path of
:mod:`cassr_cli.io.image`.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import tifffile
from PIL import Image

from cassr_cli.errors import UnsupportedImageError
from cassr_cli.io.metadata import EXIF_PREFIX, tiff_text_tags

logger = logging.getLogger(__name__)


class Pixels(NamedTuple):
    """What a decoder gives: colour and alpha in stored orientation, before EXIF orientation is applied."""

    color: np.ndarray  # float32 [H, W, 1 | 3] in [0, 1], stored orientation
    alpha: np.ndarray | None  # float32 [H, W] in [0, 1]
    bit_depth: int
    drop_icc: bool  # the colours were converted away from the profile's colour space


# --- decoding -----------------------------------------------------------------------------------------


def png_header(path: Path) -> tuple[int, int]:
    """``(bit depth, colour type)`` from a PNG's IHDR chunk (bytes 24 and 25 of the file)."""
    with path.open("rb") as f:
        head = f.read(26)
    return head[24], head[25]


def decode_png16(path: Path, im: Image.Image, *, gray_alpha: bool) -> Pixels:
    """16-bit gray+alpha, RGB or RGBA PNG through OpenCV (Pillow would reduce them to 8 bits)."""
    data = path.read_bytes()
    if data.rfind(b"IEND") < 0:  # checked here so libpng does not print its own complaint
        raise UnsupportedImageError(f"{path}: truncated PNG (no IEND chunk)")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise UnsupportedImageError(f"{path}: corrupt 16-bit PNG")
    arr = _swap_rb(arr)
    values = arr.astype(np.float32) / np.float32(65535)
    if gray_alpha:  # OpenCV expands gray + alpha to 4 channels
        return Pixels(values[..., :1], values[..., -1], 16, False)
    if arr.shape[2] == 4:
        return Pixels(values[..., :3], values[..., 3], 16, False)
    return Pixels(values, key_color_alpha(arr, im.info.get("transparency")), 16, False)


def is_plain_tiff16(im: Image.Image) -> bool:
    """16-bit unsigned gray or RGB TIFF (other 16-bit layouts go through Pillow)."""
    bits = im.tag_v2.get(258, (1,))  # type: ignore[attr-defined]
    sample_format = im.tag_v2.get(339, (1,))  # type: ignore[attr-defined]
    photometric = im.tag_v2.get(262)  # type: ignore[attr-defined]
    formats = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    return all(b == 16 for b in bits) and all(f == 1 for f in formats) and photometric in (1, 2)


def decode_tiff16(path: Path, im: Image.Image) -> Pixels:
    """16-bit gray/RGB TIFF (with or without alpha) through tifffile, or OpenCV for codecs it lacks."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr = page.asarray()
            axes = page.axes  # type: ignore[union-attr]
        arr = np.moveaxis(arr, axes.index("S"), -1) if "S" in axes else arr[..., None]
    except ValueError as exc:
        if "imagecodecs" not in str(exc):
            raise
        logger.debug("%s: tifffile cannot decode it (%s); using OpenCV", path, exc)
        arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.dtype != np.uint16:
            raise UnsupportedImageError(
                f"{path}: this 16-bit TIFF compression cannot be decoded",
                hint="install the optional package imagecodecs (pip install imagecodecs)",
            ) from exc
        arr = _swap_rb(arr if arr.ndim == 3 else arr[..., None])
    values = arr.astype(np.float32) / np.float32(65535)
    base = 1 if im.tag_v2.get(262) == 1 else 3  # type: ignore[attr-defined]
    extra = im.tag_v2.get(338, ())  # type: ignore[attr-defined]
    kind = extra[0] if extra else 2  # no ExtraSamples tag: treat the extra channel as alpha, like Pillow
    if values.shape[2] <= base or kind == 0:  # 0 = unspecified extra channel: not alpha (Pillow: RGBX)
        return Pixels(values[..., :base], None, 16, False)
    color, alpha = values[..., :base], values[..., base]
    if kind == 1:  # associated (premultiplied) alpha
        color = _unpremultiply(color, alpha)
    return Pixels(color, alpha, 16, False)


def key_color_alpha(arr: np.ndarray, key: object) -> np.ndarray | None:
    """Alpha for a tRNS colour key: 0 where every channel of ``arr [H, W, C]`` equals ``key``, else 1."""
    if key is None or isinstance(key, bytes):
        return None
    key_values = np.asarray(key if isinstance(key, tuple) else (key,), dtype=np.int64)
    if key_values.size != arr.shape[2]:
        return None
    return np.any(arr != key_values, axis=2).astype(np.float32)


def _swap_rb(arr: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) channel order ↔ RGB(A) (its own inverse); gray ``[H, W]`` → ``[H, W, 1]``."""
    if arr.ndim == 2:
        return arr[..., None]
    if arr.shape[2] in (3, 4):
        return arr[..., [2, 1, 0, *range(3, arr.shape[2])]]
    return arr


def _unpremultiply(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``color [H, W, C]`` premultiplied by ``alpha [H, W]`` → straight colour (0 where alpha is 0)."""
    a = alpha[..., None]
    safe = np.where(a > 0, a, np.float32(1))
    return np.clip(np.where(a > 0, color / safe, 0), 0.0, 1.0).astype(np.float32)


# --- encoding -----------------------------------------------------------------------------------------


def encode_tiff16(pixels: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """16-bit ``pixels [H, W, 1|2|3|4]`` as a deflate TIFF (unassociated alpha) through tifffile."""
    if pixels.shape[2] == 2:  # 16-bit gray+alpha TIFF: valid, but Pillow (so cassr itself) cannot open it
        logger.debug("writing 16-bit gray+alpha TIFF as RGBA so that it stays readable")
        pixels = pixels[..., [0, 0, 0, 1]]
    channels = pixels.shape[2]
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        pixels[..., 0] if channels == 1 else pixels,
        photometric="minisblack" if channels <= 2 else "rgb",
        extrasamples=(2,) if channels in (2, 4) else None,
        compression="zlib",
        predictor=True,
        iccprofile=icc,
        metadata=None,
        software=False,
        extratags=[(tag, "s", 0, value, True) for tag, value in tiff_text_tags(exif).items()],
    )
    return buffer.getvalue()


def encode_png16(pixels: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """A 16-bit PNG (gray, gray+alpha, RGB, RGBA) with ``iCCP`` and ``eXIf`` chunks right after IHDR."""
    metadata = b""
    if icc:
        metadata += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        metadata += _png_chunk(b"eXIf", exif[len(EXIF_PREFIX) :])
    if pixels.shape[2] == 2:  # OpenCV cannot write gray+alpha
        png = _build_png16(pixels)
    else:
        ok, encoded = cv2.imencode(
            ".png", _swap_rb(pixels) if pixels.shape[2] > 1 else pixels[..., 0], [cv2.IMWRITE_PNG_COMPRESSION, 3]
        )
        if not ok:
            raise ValueError("OpenCV could not encode the PNG")
        png = encoded.tobytes()
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, data and CRC
    return png[:ihdr_end] + metadata + png[ihdr_end:]


def _build_png16(pixels: np.ndarray) -> bytes:
    """A plain 16-bit PNG of ``pixels [H, W, C]`` (C = 1–4), rows "Up"-filtered, zlib level 3 (as 8-bit PNGs)."""
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").reshape(height, -1).view(np.uint8)
    filtered = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # wraps mod 256
    data = zlib.compress(np.concatenate([np.full((height, 1), 2, np.uint8), filtered], axis=1).tobytes(), 3)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        [
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)),
            _png_chunk(b"IDAT", data),
            _png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """length, type, data, CRC-32 of type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
