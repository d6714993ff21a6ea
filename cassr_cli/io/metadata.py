"""EXIF and ICC metadata of images: orientation on read, what is carried to the output, what a format can hold.

Reading: :func:`orientation` gives the EXIF orientation (1–8) from the header and :func:`apply_orientation`
turns stored pixels into displayed ones (NumPy flips/transposes, the same for every decoder).
:func:`carried_exif` is the EXIF block the output carries: Orientation reset to 1, everything else
byte-for-byte as read. A TIFF input keeps its EXIF in its own IFD0, so of it only the descriptive tags are
carried, not the pixel-layout ones.

Writing: :func:`usable_icc` and :func:`usable_exif` decide what the output format can carry (BMP carries
neither; a JPEG EXIF segment holds at most 65533 bytes; the ICC profile's colour space must match the
written channels). :func:`tiff_text_tags` gives the descriptive IFD0 tags (Make, Model, DateTime, Artist,
Copyright, Software, ImageDescription): all of EXIF that a compressed TIFF output can carry, since neither
libtiff through Pillow nor tifffile writes the EXIF/GPS sub-IFDs.

Known limits: a PNG ``eXIf`` chunk after the image data (not allowed by the PNG specification) is ignored,
as is an orientation stored only in XMP.
"""

from __future__ import annotations

import logging
import struct
import zlib

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

EXIF_PREFIX = b"Exif\x00\x00"
"""What precedes the TIFF structure of an EXIF block (in JPEG APP1, and in the blocks carried to outputs)."""

DECODE_ERRORS = (
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

_ORIENTATION = 0x0112
_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)  # ImageDescription … Copyright
_TIFF_EXIF_TAGS = frozenset({*_TIFF_TEXT_TAGS, 274, 282, 283, 296, 318, 319, 0x8769, 0x8825})


# --- orientation and metadata of inputs ---------------------------------------------------------------


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels ``[H, W, ...]`` into displayed pixels for EXIF orientation 1–8."""
    if orientation in (5, 6, 7, 8):
        arr = arr.swapaxes(0, 1)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 5: (), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    return np.flip(arr, axis=flips) if flips else arr


def orientation(im: Image.Image) -> int:
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
    tiff = raw[len(EXIF_PREFIX) :] if raw.startswith(EXIF_PREFIX) else raw
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


def carried_exif(im: Image.Image) -> bytes | None:
    """The EXIF block for the output: ``Exif\\0\\0`` + TIFF, Orientation set to 1 in place."""
    if im.format == "TIFF":
        try:
            return _exif_from_tiff_tags(im)
        except DECODE_ERRORS as exc:
            logger.warning("%s: unreadable EXIF tags (%s); not carrying them", im.filename, exc)
            return None
    tiff = _exif_tiff_part(im.info.get("exif"))
    if tiff is None:
        return None
    entry = _orientation_entry(tiff)
    if entry is None:
        return EXIF_PREFIX + tiff
    patched = bytearray(tiff)
    struct.pack_into(entry[0] + "H", patched, entry[1], 1)
    return EXIF_PREFIX + bytes(patched)


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


# --- metadata of outputs ------------------------------------------------------------------------------


def usable_icc(icc: bytes | None, *, gray: bool, fmt: str) -> bytes | None:
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


def usable_exif(exif: bytes | None, fmt: str) -> bytes | None:
    """The EXIF block (``Exif\\0\\0`` prefix ensured) if the format can carry it, else None."""
    if not exif:
        return None
    if fmt == "bmp":
        logger.debug("BMP cannot carry EXIF; dropping it")
        return None
    if fmt == "jpg" and len(exif) > 65533:
        logger.warning("the EXIF block (%d bytes) does not fit in a JPEG segment; dropping it", len(exif))
        return None
    return exif if exif.startswith(EXIF_PREFIX) else EXIF_PREFIX + exif


def tiff_text_tags(exif: bytes | None) -> dict[int, str]:
    """The descriptive ASCII tags of IFD0 (Make, Model, …): all a compressed TIFF can carry of EXIF here."""
    parsed = Image.Exif()
    try:
        parsed.load(exif or b"")
    except (SyntaxError, ValueError, struct.error, OSError):
        return {}
    values = {tag: parsed.get(tag) for tag in _TIFF_TEXT_TAGS}
    return {tag: v for tag, v in values.items() if isinstance(v, str) and v.isascii()}
