"""Output paths: same relative name under DEST, ``--suffix``, ``--format``; never two inputs on one output,
never an output on top of an input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cassr_cli.errors import OverwriteInputError, UsageError
from cassr_cli.io.discover import InputItem

FORMAT_EXTENSIONS: dict[str, str] = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff", "bmp": ".bmp"}
"""Extension written for each explicit ``--format``."""

EXTENSION_FORMATS: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".jpe": "jpg",
    ".webp": "webp",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
}
"""Format of each input extension (lower case), used by ``--format same``."""


@dataclass(frozen=True)
class PlannedOutput:
    """Where one input's result goes.

    Attributes:
        item: the input.
        output: the output file path (under DEST).
        fmt: the encoder to use: png, jpg, webp, tiff or bmp.
    """

    item: InputItem
    output: Path
    fmt: str


def output_format(input_path: Path, requested: str) -> tuple[str, str]:
    """``(format, extension)`` for an input and a ``--format`` value; ``same`` keeps the input's
    extension exactly (including its case)."""
    if requested == "same":
        ext = input_path.suffix
        fmt = EXTENSION_FORMATS.get(ext.lower())
        if fmt is None:
            raise UsageError(f"cannot keep the format of {input_path}: unknown extension {ext!r}")
        return fmt, ext
    return requested, FORMAT_EXTENSIONS[requested]


def plan_outputs(items: Sequence[InputItem], dest: Path, *, suffix: str, fmt: str) -> list[PlannedOutput]:
    """Assign every input a distinct output path under ``dest``.

    The output of ``sub/name.ext`` is ``dest/sub/name{suffix}{new_ext}``. When two inputs would share a
    path, an input whose extension already is the output's keeps the plain name (``a.png`` → ``a.png``),
    others keep their source extension in the name (``a.jpg`` → ``a.jpg.png``), then a counter
    (``a-2.png``, for two folders' ``a.png`` in a flat batch, in processing order). Names compare
    case-insensitively so the plan is safe on case-insensitive disks.

    Raises:
        OverwriteInputError: some output path is one of the inputs.
    """
    planned = [
        PlannedOutput(item=item, output=dest.joinpath(*rel.parts), fmt=out_fmt)
        for item, out_fmt, rel in _assign_names(items, suffix, fmt)
    ]
    _refuse_overwriting_inputs(planned)
    return planned


def _assign_names(
    items: Sequence[InputItem], suffix: str, fmt: str
) -> list[tuple[InputItem, str, PurePosixPath]]:
    """``(item, output format, output relative path)`` per item, in the items' order. Two passes: inputs
    already in the output's extension claim their plain names first, so they never get renamed because
    a differently-typed namesake came earlier in the order."""
    formats = [output_format(item.path, fmt) for item in items]
    taken: set[str] = set()
    names: dict[int, PurePosixPath] = {}
    keeps_extension = [item.relative.suffix.lower() == ext.lower() for item, (_, ext) in zip(items, formats, strict=True)]
    for first_pass in (True, False):
        for index, (item, (_, ext)) in enumerate(zip(items, formats, strict=True)):
            if keeps_extension[index] == first_pass:
                names[index] = _unique_relative(item.relative, suffix, ext, taken)
    return [(item, out_fmt, names[i]) for i, (item, (out_fmt, _)) in enumerate(zip(items, formats, strict=True))]


def drop_previous_outputs(
    items: Sequence[InputItem], dest: Path, *, suffix: str, fmt: str
) -> tuple[list[InputItem], list[InputItem]]:
    """``(kept, dropped)``: with a ``suffix``, an input that is exactly another input's output in this
    batch is an earlier result of cassr (a re-run with DEST equal to a source folder finds
    ``a_x4.png`` next to ``a.png``), so it is dropped instead of being upscaled again (``a_x4_x4.png``).
    Without a suffix nothing is dropped (an output landing on an input stays an error)."""
    if not suffix:
        return list(items), []
    produced = {
        os.path.normcase(os.path.realpath(dest.joinpath(*rel.parts))) for _, _, rel in _assign_names(items, suffix, fmt)
    }
    kept: list[InputItem] = []
    dropped: list[InputItem] = []
    for item in items:
        is_output = os.path.normcase(os.path.realpath(item.path)) in produced
        (dropped if is_output else kept).append(item)
    return kept, dropped


def _unique_relative(relative: PurePosixPath, suffix: str, ext: str, taken: set[str]) -> PurePosixPath:
    stem = relative.stem
    parent = relative.parent
    candidates = [f"{stem}{suffix}{ext}"]
    source_ext = relative.suffix
    if source_ext and source_ext.lower() != ext.lower():
        candidates.append(f"{stem}{suffix}{source_ext}{ext}")
    for name in candidates:
        rel = parent / name
        if str(rel).lower() not in taken:
            taken.add(str(rel).lower())
            return rel
    counter = 2
    while True:
        rel = parent / f"{stem}{suffix}-{counter}{ext}"
        if str(rel).lower() not in taken:
            taken.add(str(rel).lower())
            return rel
        counter += 1


def _refuse_overwriting_inputs(planned: Sequence[PlannedOutput]) -> None:
    """Compare outputs with inputs by resolved path and, for outputs that already exist, by inode
    (catches hard links and case-insensitive disks). Linear in the number of inputs."""
    by_path = {os.path.normcase(os.path.realpath(p.item.path)): p.item.path for p in planned}
    by_inode: dict[tuple[int, int], Path] = {}
    for p in planned:
        key = _inode(p.item.path)
        if key is not None:
            by_inode.setdefault(key, p.item.path)
    for p in planned:
        victim = by_path.get(os.path.normcase(os.path.realpath(p.output)))
        if victim is None:
            key = _inode(p.output)
            victim = by_inode.get(key) if key is not None else None
        if victim is not None:
            raise OverwriteInputError(
                f"output {p.output} would overwrite the input {victim}",
                hint="choose another DEST, or add --suffix / --format so outputs get their own names",
            )


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
