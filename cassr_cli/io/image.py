"""Image decoding and encoding with full fidelity, and atomic writes (torch-free: NumPy arrays only).

Reading (:func:`read_image`) gives float32 RGB ``[H, W, 3]`` in ``[0, 1]`` plus what the output needs to stay
faithful to the input:

* EXIF orientation 2–8 is applied to the pixels (NumPy flips/transposes, the same for every decoder); the
  EXIF block carried to the output has Orientation reset to 1, everything else byte-for-byte as read.
* The embedded ICC profile is carried byte-exactly. CMYK is converted to RGB (through its ICC profile with
  LittleCMS when it has one) and then carries no profile; CIELab is converted to sRGB, likewise.
* Alpha from RGBA, LA, palette transparency (tRNS, including a single transparent index), PA, and the
  premultiplied modes (unpremultiplied on read).
* 16 bits stay 16 bits: Pillow reduces 16-bit colour PNGs to 8 bits, so those are decoded with OpenCV
  (bit depth from the IHDR chunk); 16-bit gray PNGs with Pillow (``I;16``); 16-bit TIFFs with tifffile
  (OpenCV when tifffile lacks the codec, e.g. LZW without ``imagecodecs``).
* Grayscale stays grayscale (``is_gray``); palettes whose colours are all gray count as grayscale.
* Refused with :class:`UnsupportedImageError`: empty, truncated or corrupt files, non-images, animated or
  multi-page images. MPO (multi-picture JPEG from cameras) reads its primary picture. Pillow's
  decompression-bomb check is replaced by ours (:class:`ImageTooLargeError` from the header, before any
  pixel is decoded), so ``--max-pixels`` can raise the limit.

Writing (:func:`encode_image`, :func:`write_atomic`): PNG and TIFF keep 16 bits (PNG through OpenCV with
``iCCP``/``eXIf`` chunks inserted after IHDR, TIFF through tifffile); JPEG, WebP and BMP get 8 bits. JPEG
and BMP cannot carry alpha: it is composited onto white (with a warning). BMP carries no ICC or EXIF.

Known limits: TIFF outputs keep the ICC profile but, of EXIF, only the descriptive IFD0 tags (Make, Model,
DateTime, Artist, Copyright, Software, ImageDescription): neither libtiff through Pillow nor tifffile writes
the EXIF/GPS sub-IFDs into a compressed TIFF. A 16-bit gray+alpha TIFF is written as RGBA (Pillow, and so
this reader, cannot open 16-bit gray+alpha TIFFs). A PNG ``eXIf`` chunk after the image data (not allowed
by the PNG specification) is ignored, as is an orientation stored only in XMP.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageCms, UnidentifiedImageError

from cassr_cli.errors import ImageTooLargeError, ImageWriteError, UnsupportedImageError

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".tif", ".tiff"}
)
"""Input file extensions (lower case, with the dot)."""

OUTPUT_FORMATS: frozenset[str] = frozenset({"png", "jpg", "webp", "tiff", "bmp"})

_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG includes MPO
_SOURCE_FORMAT = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp"}
_SOURCE_FORMAT["GIF"] = "png"  # a single-frame GIF: GIF cannot be written, PNG is its lossless successor
_EXIF_PREFIX = b"Exif\x00\x00"
_ORIENTATION = 0x0112
_LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MAX_SIDE = {"webp": 16383, "jpg": 65535}
_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)  # ImageDescription … Copyright
_TIFF_EXIF_TAGS = frozenset({*_TIFF_TEXT_TAGS, 274, 282, 283, 296, 318, 319, 0x8769, 0x8825})
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
    cv2.error,
)  # what Pillow, tifffile and OpenCV raise on bad data
_FRAMES_MESSAGE = (
    "animated or multi-frame image ({n} frames) is not supported; extract the frames first, e.g. with ffmpeg"
)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and the metadata its output should carry.

    Attributes:
        rgb: float32 ``[H, W, 3]`` in ``[0, 1]``, orientation applied; gray inputs replicated to 3 channels.
        alpha: float32 ``[H, W]`` in ``[0, 1]``, or None when the input has no alpha/transparency.
        is_gray: the input was grayscale (write the output as grayscale).
        bit_depth: 8 or 16 (16 for 16-bit PNG/TIFF, 32-bit integer and float inputs).
        source_format: ``"png" | "jpg" | "webp" | "tiff" | "bmp"``.
        icc_profile: the embedded ICC profile, or None (also after a CMYK/Lab → RGB conversion).
        exif: the EXIF block (``b"Exif\\0\\0"`` + TIFF structure) with Orientation reset to 1, or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    is_gray: bool
    bit_depth: int
    source_format: str
    icc_profile: bytes | None
    exif: bytes | None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


class _Pixels(NamedTuple):
    color: np.ndarray  # float32 [H, W, 1 | 3] in [0, 1], stored orientation
    alpha: np.ndarray | None  # float32 [H, W] in [0, 1]
    bit_depth: int
    drop_icc: bool  # the colours were converted away from the profile's colour space


# --- reading ------------------------------------------------------------------------------------------


def probe_image(path: Path) -> tuple[int, int]:
    """``(height, width)`` as displayed (after EXIF orientation), from the header only."""
    with _open_header(path) as (im, _frames):
        width, height = im.size
        if _orientation(im) >= 5:
            width, height = height, width
    return height, width


def read_image(path: Path, *, max_pixels: int) -> DecodedImage:
    """Decode ``path`` with full fidelity (see the module docstring).

    Raises:
        UnsupportedImageError: empty, truncated, corrupt, not an image, animated/multi-page, unknown mode.
        ImageTooLargeError: ``width × height > max_pixels`` (checked before any pixel is decoded).
    """
    with _open_header(path) as (im, frames):
        _check_size(path, im, max_pixels)
        if frames > 1 and im.format != "MPO":  # MPO: camera JPEG with extra pictures; read the primary
            raise UnsupportedImageError(f"{path}: " + _FRAMES_MESSAGE.format(n=frames))
        orientation = _orientation(im)
        icc = im.info.get("icc_profile") or None
        exif = _carried_exif(im)
        source_format = _SOURCE_FORMAT[im.format or ""]
        pixels = _decode(path, im)
    color = _apply_orientation(pixels.color, orientation)
    alpha = None if pixels.alpha is None else _apply_orientation(pixels.alpha, orientation)
    is_gray = color.shape[2] == 1
    rgb = np.ascontiguousarray(np.repeat(color, 3, axis=2) if is_gray else color)
    return DecodedImage(
        rgb=rgb,
        alpha=None if alpha is None else np.ascontiguousarray(alpha),
        is_gray=is_gray,
        bit_depth=pixels.bit_depth,
        source_format=source_format,
        icc_profile=None if pixels.drop_icc else icc,
        exif=exif,
    )


@contextlib.contextmanager
def _open_header(path: Path) -> Iterator[tuple[Image.Image, int]]:
    """``(image, frame count)`` opened by Pillow (header only, its bomb check swapped for ours); closed after."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnsupportedImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise UnsupportedImageError(f"{path}: empty file")
    with _PILLOW_LIMIT.lifted():  # Pillow checks in open, seek and load (TIFF): lift it for all of them
        im, frames = _open_and_count_frames(path)
        try:
            yield im, frames
        finally:
            im.close()


class _PillowLimitLift:
    """Lifts ``Image.MAX_IMAGE_PIXELS`` while any read is in progress and restores it after the last one.

    The limit is process-wide; a counter (not a save/restore per call) keeps concurrent reads from
    restoring each other's ``None``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: int | None = None

    @contextlib.contextmanager
    def lifted(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                self._saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    Image.MAX_IMAGE_PIXELS = self._saved


_PILLOW_LIMIT = _PillowLimitLift()


def _open_and_count_frames(path: Path) -> tuple[Image.Image, int]:
    try:
        im = Image.open(path, formats=_PILLOW_FORMATS)
    except UnidentifiedImageError as exc:
        what = "a TIFF layout that cannot be read" if _is_tiff(path) else "not a recognised image"
        raise UnsupportedImageError(f"{path}: {what} (PNG, JPEG, WebP, TIFF or BMP)") from exc
    except _DECODE_ERRORS as exc:
        raise UnsupportedImageError(f"{path}: corrupt or truncated image header ({exc})") from exc
    try:
        return im, int(getattr(im, "n_frames", 1))
    except _DECODE_ERRORS as exc:
        im.close()
        raise UnsupportedImageError(f"{path}: corrupt or truncated image header ({exc})") from exc


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*")


def _check_size(path: Path, im: Image.Image, max_pixels: int) -> None:
    width, height = im.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{path}: {width}×{height} is {width * height / 1e6:.1f} megapixels, more than the limit of "
            f"{max_pixels / 1e6:.1f} megapixels",
            hint="raise the limit with --max-pixels if you trust this file",
        )


def _decode(path: Path, im: Image.Image) -> _Pixels:
    """Route to the decoder that keeps the input's bit depth."""
    try:
        png_header = _png_header(path) if im.format == "PNG" else None
        if png_header in ((16, 2), (16, 4), (16, 6)):
            return _decode_png16(path, im, gray_alpha=png_header == (16, 4))
        if im.format == "TIFF" and _is_plain_tiff16(im):
            return _decode_tiff16(path, im)
        im.load()
        return _decode_pillow(im)
    except UnsupportedImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise UnsupportedImageError(f"{path}: corrupt or truncated image ({exc})") from exc


def _png_header(path: Path) -> tuple[int, int]:
    """``(bit depth, colour type)`` from a PNG's IHDR chunk (bytes 24 and 25 of the file)."""
    with path.open("rb") as f:
        head = f.read(26)
    return head[24], head[25]


def _decode_png16(path: Path, im: Image.Image, *, gray_alpha: bool) -> _Pixels:
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
        return _Pixels(values[..., :1], values[..., -1], 16, False)
    if arr.shape[2] == 4:
        return _Pixels(values[..., :3], values[..., 3], 16, False)
    return _Pixels(values, _key_color_alpha(arr, im.info.get("transparency")), 16, False)


def _is_plain_tiff16(im: Image.Image) -> bool:
    """16-bit unsigned gray or RGB TIFF (other 16-bit layouts go through Pillow)."""
    bits = im.tag_v2.get(258, (1,))  # type: ignore[attr-defined]
    sample_format = im.tag_v2.get(339, (1,))  # type: ignore[attr-defined]
    photometric = im.tag_v2.get(262)  # type: ignore[attr-defined]
    formats = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    return all(b == 16 for b in bits) and all(f == 1 for f in formats) and photometric in (1, 2)


def _decode_tiff16(path: Path, im: Image.Image) -> _Pixels:
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
        return _Pixels(values[..., :base], None, 16, False)
    color, alpha = values[..., :base], values[..., base]
    if kind == 1:  # associated (premultiplied) alpha
        color = _unpremultiply(color, alpha)
    return _Pixels(color, alpha, 16, False)


def _decode_pillow(im: Image.Image) -> _Pixels:
    """Every 8-bit layout plus Pillow's 16/32-bit gray and float modes."""
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im)
        color = np.clip(arr.astype(np.float32) / np.float32(65535), 0.0, 1.0)[..., None]
        return _Pixels(color, _key_color_alpha(arr[..., None], im.info.get("transparency")), 16, False)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        scale = np.float32(1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 65535.0)
        return _Pixels(np.clip(np.nan_to_num(arr) / scale, 0.0, 1.0)[..., None], None, 16, False)
    drop_icc = mode in ("CMYK", "LAB")
    if mode == "CMYK":
        im = _cmyk_to_rgb(im)
    gray = mode in ("1", "L", "LA", "La") or (mode in ("P", "PA") and _palette_is_gray(im))
    target = ("LA" if gray else "RGBA") if im.has_transparency_data else ("L" if gray else "RGB")
    arr = np.asarray(im if im.mode == target else im.convert(target))
    values = (arr.astype(np.float32) / np.float32(255)).reshape(arr.shape[0], arr.shape[1], -1)
    if target in ("LA", "RGBA"):
        return _Pixels(values[..., :-1], values[..., -1], 8, drop_icc)
    return _Pixels(values, None, 8, drop_icc)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK → RGB through the embedded ICC profile (to sRGB) when there is one, else Pillow's formula."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                im, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            logger.warning(
                "%s: its CMYK ICC profile is unusable (%s); converting without it", im.filename, exc
            )
    return im.convert("RGB")


def _palette_is_gray(im: Image.Image) -> bool:
    palette = im.getpalette("RGB")
    if not palette:
        return False
    entries = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(entries == entries[:, :1]))


def _key_color_alpha(arr: np.ndarray, key: object) -> np.ndarray | None:
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


# --- orientation and metadata -------------------------------------------------------------------------


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels ``[H, W, ...]`` into displayed pixels for EXIF orientation 1–8."""
    if orientation in (5, 6, 7, 8):
        arr = arr.swapaxes(0, 1)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 5: (), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    return np.flip(arr, axis=flips) if flips else arr


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1–8) from the header; 1 when absent or invalid."""
    if im.format == "TIFF":
        value = im.tag_v2.get(_ORIENTATION, 1)  # type: ignore[attr-defined]
    else:
        value = _exif_orientation(_exif_tiff_part(im.info.get("exif")))
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_tiff_part(raw: object) -> bytes | None:
    """The TIFF structure of an EXIF block, with or without the ``Exif\\0\\0`` prefix."""
    if not isinstance(raw, bytes) or not raw:
        return None
    tiff = raw[len(_EXIF_PREFIX) :] if raw.startswith(_EXIF_PREFIX) else raw
    return tiff if tiff[:4] in (b"II*\x00", b"MM\x00*") else None


def _exif_orientation(tiff: bytes | None) -> int:
    entry = _orientation_entry(tiff) if tiff else None
    return struct.unpack_from(entry[0] + "H", tiff, entry[1])[0] if entry and tiff else 1


def _orientation_entry(tiff: bytes) -> tuple[str, int] | None:
    """(byte order, offset of the value) of IFD0's Orientation entry, or None."""
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        ifd = struct.unpack_from(order + "I", tiff, 4)[0]
        count = struct.unpack_from(order + "H", tiff, ifd)[0]
        for pos in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, pos)
            if tag == _ORIENTATION and kind == 3 and n == 1:
                return order, pos + 8
    except struct.error:
        return None
    return None


def _carried_exif(im: Image.Image) -> bytes | None:
    """The EXIF block for the output: ``Exif\\0\\0`` + TIFF, Orientation set to 1 in place."""
    if im.format == "TIFF":
        try:
            return _exif_from_tiff_tags(im)
        except _DECODE_ERRORS as exc:
            logger.warning("%s: unreadable EXIF tags (%s); not carrying them", im.filename, exc)
            return None
    tiff = _exif_tiff_part(im.info.get("exif"))
    if tiff is None:
        return None
    entry = _orientation_entry(tiff)
    if entry is None:
        return _EXIF_PREFIX + tiff
    patched = bytearray(tiff)
    struct.pack_into(entry[0] + "H", patched, entry[1], 1)
    return _EXIF_PREFIX + bytes(patched)


def _exif_from_tiff_tags(im: Image.Image) -> bytes | None:
    """A TIFF input keeps EXIF in its own IFD0: carry the descriptive tags, not the pixel-layout ones."""
    exif = im.getexif()
    for tag in [t for t in exif if t not in _TIFF_EXIF_TAGS]:
        del exif[tag]
    if not exif:
        return None
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    return exif.tobytes()


# --- encoding -----------------------------------------------------------------------------------------


def encode_image(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    *,
    fmt: str,
    bit_depth: int,
    is_gray: bool,
    quality: int,
    icc_profile: bytes | None,
    exif: bytes | None,
) -> bytes:
    """Encode an image to the bytes of a ``fmt`` file.

    Args:
        rgb: float32 ``[H, W, 3]``, nominally ``[0, 1]`` (values outside are clipped).
        alpha: float32 ``[H, W]`` in ``[0, 1]``, or None.
        fmt: ``"png" | "jpg" | "webp" | "tiff" | "bmp"``.
        bit_depth: 8 or 16; 16 is honoured by PNG and TIFF, the others get 8 bits.
        is_gray: write a single gray channel (ITU-R 601 luma of ``rgb``); WebP stores it as RGB.
        quality: 1–100 for JPEG and WebP (100 = lossless WebP; ≥ 90 = 4:4:4 JPEG chroma).
        icc_profile, exif: carried where the format allows (EXIF as ``Exif\\0\\0`` + TIFF structure).

    Raises:
        ImageWriteError: bad arguments for the format, or the encoder failed.
    """
    _check_encode_args(rgb, alpha, fmt, bit_depth, quality)
    depth = 16 if bit_depth == 16 and fmt in ("png", "tiff") else 8
    if bit_depth == 16 and depth == 8:
        logger.info("%s cannot hold 16 bits per channel; writing 8 bits", fmt.upper())
    color = _luma(rgb) if is_gray else np.clip(rgb, 0.0, 1.0)
    if fmt == "webp" and color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    if alpha is not None and fmt in ("jpg", "bmp"):
        logger.warning("%s cannot store transparency; compositing the image onto white", fmt.upper())
        a = np.clip(alpha, 0.0, 1.0)[..., None]
        color, alpha = color * a + (1.0 - a), None
    channels = color if alpha is None else np.concatenate([color, np.clip(alpha, 0, 1)[..., None]], axis=2)
    pixels = _quantize(channels, depth)
    icc = _usable_icc(icc_profile, gray=color.shape[2] == 1, fmt=fmt)
    exif = _usable_exif(exif, fmt)
    try:
        if depth == 16:
            return _encode_png16(pixels, icc, exif) if fmt == "png" else _encode_tiff16(pixels, icc, exif)
        return _encode_pillow(pixels, fmt, quality, icc, exif)
    except (OSError, ValueError, TypeError, zlib.error) as exc:
        raise ImageWriteError(f"cannot encode the image as {fmt.upper()}: {exc}") from exc


def _check_encode_args(
    rgb: np.ndarray, alpha: np.ndarray | None, fmt: str, bit_depth: int, quality: int
) -> None:
    if fmt not in OUTPUT_FORMATS:
        raise ImageWriteError(
            f"unknown output format {fmt!r} (expected one of {', '.join(sorted(OUTPUT_FORMATS))})"
        )
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageWriteError(f"expected an RGB array [H, W, 3], got shape {rgb.shape}")
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise ImageWriteError(f"alpha shape {alpha.shape} does not match the image {rgb.shape[:2]}")
    if bit_depth not in (8, 16) or not 1 <= quality <= 100:
        raise ImageWriteError(f"bit depth must be 8 or 16 and quality 1–100 (got {bit_depth}, {quality})")
    limit = _MAX_SIDE.get(fmt)
    if limit is not None and max(rgb.shape[:2]) > limit:
        raise ImageWriteError(
            f"{fmt.upper()} cannot store {rgb.shape[1]}×{rgb.shape[0]} pixels (at most {limit} per side)",
            hint="choose --format png or tiff for very large outputs",
        )


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma ``[H, W, 1]`` of ``rgb [H, W, 3]`` (a gray-replicated image gives its gray back)."""
    return np.clip(np.asarray(rgb, dtype=np.float32) @ _LUMA_601, 0.0, 1.0)[..., None]


def _quantize(values: np.ndarray, depth: int) -> np.ndarray:
    """float ``[0, 1]`` → uint8 (``round(x · 255)``) or uint16 (``round(x · 65535)``)."""
    top, dtype = (65535, np.uint16) if depth == 16 else (255, np.uint8)
    return np.round(np.clip(np.nan_to_num(values), 0.0, 1.0) * np.float32(top)).astype(dtype)


def _usable_icc(icc: bytes | None, *, gray: bool, fmt: str) -> bytes | None:
    """The profile if the format can carry it and its colour space matches the written channels."""
    if not icc or fmt == "bmp":
        if icc:
            logger.debug("BMP cannot carry an ICC profile; dropping it")
        return None
    space = icc[16:20] if len(icc) >= 20 else b""
    wanted = b"GRAY" if gray else b"RGB "
    if space != wanted:
        logger.warning("the ICC profile describes %r data, not %r; not attaching it", space, wanted)
        return None
    return icc


def _usable_exif(exif: bytes | None, fmt: str) -> bytes | None:
    if not exif:
        return None
    if fmt == "bmp":
        logger.debug("BMP cannot carry EXIF; dropping it")
        return None
    if fmt == "jpg" and len(exif) > 65533:
        logger.warning("the EXIF block (%d bytes) does not fit in a JPEG segment; dropping it", len(exif))
        return None
    return exif if exif.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + exif


def _encode_pillow(
    pixels: np.ndarray, fmt: str, quality: int, icc: bytes | None, exif: bytes | None
) -> bytes:
    """8-bit ``pixels [H, W, 1|2|3|4]`` (L, LA, RGB, RGBA) through Pillow."""
    im = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    options: dict[str, object] = {}
    if icc:
        options["icc_profile"] = icc
    if exif:
        options["exif"] = exif
    if fmt == "png":
        options["compress_level"] = 6
    elif fmt == "jpg":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "webp":
        options.update(quality=quality, lossless=quality == 100)
    elif fmt == "tiff":  # libtiff cannot write the EXIF sub-IFDs: carry the IFD0 descriptive tags
        options["compression"] = "tiff_adobe_deflate"
        options.pop("exif", None)
        tags = Image.Exif()
        tags.update(_tiff_text_tags(exif))
        if tags:
            options["exif"] = tags
    buffer = io.BytesIO()
    pillow_format = {"jpg": "JPEG", "tiff": "TIFF"}.get(fmt, fmt.upper())
    im.save(buffer, pillow_format, **options)
    return buffer.getvalue()


def _encode_tiff16(pixels: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
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
        extratags=[(tag, "s", 0, value, True) for tag, value in _tiff_text_tags(exif).items()],
    )
    return buffer.getvalue()


def _tiff_text_tags(exif: bytes | None) -> dict[int, str]:
    """The descriptive ASCII tags of IFD0 (Make, Model, …): all a compressed TIFF can carry of EXIF here."""
    parsed = Image.Exif()
    try:
        parsed.load(exif or b"")
    except (SyntaxError, ValueError, struct.error, OSError):
        return {}
    values = {tag: parsed.get(tag) for tag in _TIFF_TEXT_TAGS}
    return {tag: v for tag, v in values.items() if isinstance(v, str) and v.isascii()}


def _encode_png16(pixels: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """A 16-bit PNG (gray, gray+alpha, RGB, RGBA) with ``iCCP`` and ``eXIf`` chunks right after IHDR."""
    metadata = b""
    if icc:
        metadata += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        metadata += _png_chunk(b"eXIf", exif[len(_EXIF_PREFIX) :])
    if pixels.shape[2] == 2:  # OpenCV cannot write gray+alpha
        png = _build_png16(pixels)
    else:
        ok, encoded = cv2.imencode(".png", _swap_rb(pixels) if pixels.shape[2] > 1 else pixels[..., 0])
        if not ok:
            raise ValueError("OpenCV could not encode the PNG")
        png = encoded.tobytes()
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, data and CRC
    return png[:ihdr_end] + metadata + png[ihdr_end:]


def _build_png16(pixels: np.ndarray) -> bytes:
    """A plain 16-bit PNG of ``pixels [H, W, C]`` (C = 1–4), rows "Up"-filtered, zlib level 6."""
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").reshape(height, -1).view(np.uint8)
    filtered = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # wraps mod 256
    data = zlib.compress(np.concatenate([np.full((height, 1), 2, np.uint8), filtered], axis=1).tobytes(), 6)
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


# --- atomic write -------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never seen half-written.

    The bytes go to ``.{name}.{random}.cassr-partial`` in the same directory, are flushed and fsynced, and
    the temporary file is renamed onto ``path``. On any exception (KeyboardInterrupt included) the temporary
    file is removed and the exception re-raised; an existing ``path`` is left as it was. OSErrors become
    :class:`ImageWriteError`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_partial(path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise
    _fsync_directory(path.parent)


def _create_partial(path: Path) -> tuple[int, Path]:
    """Create the temporary file exclusively, with the permissions a normal file gets (umask applies)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.cassr-partial")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); harmless to skip where directories cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(path: Path, exc: OSError) -> ImageWriteError:
    return ImageWriteError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="check that the output folder is writable and has free space",
    )
