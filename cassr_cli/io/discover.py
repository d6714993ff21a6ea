"""Finding the images to process: files, folders, globs and ``-`` (a list of paths on stdin).

The result is a deterministic, de-duplicated list of :class:`InputItem` plus the notes a user should see
about what was skipped (junk files, non-images, sub-folders without ``--recursive``). Nothing here opens
an image: a file is an input when its extension says so; decoding errors surface later, per image.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cassr_cli.errors import InputNotFoundError, UsageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".tif", ".tiff"}
)
"""Extensions (lower case, with the dot) of the files cassr reads; matched case-insensitively.

Also exported as ``cassr_cli.io.image.SUPPORTED_EXTENSIONS`` (one set: this light module is where it lives)."""

JUNK_NAMES: frozenset[str] = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
"""Operating-system litter that is skipped silently apart from a note."""

PARTIAL_SUFFIX = ".cassr-partial"
"""Temporary files of an unfinished write end with this; they are never inputs."""

CLAIM_SUFFIX = ".cassr-claim"
"""Claim files (``io/claims.py``: an output being computed by some process) end with this; never inputs."""

_Add = Callable[[Path, PurePosixPath, str], None]


@dataclass(frozen=True)
class InputItem:
    """One image to process.

    Attributes:
        path: the file as the user named it (or as found inside a folder).
        relative: the path under DEST that the output mirrors (POSIX form, e.g. ``"2024/img.jpg"``);
            also the key the per-image seed derives from.
        source: the command-line source (or ``"-"``) that produced it.
    """

    path: Path
    relative: PurePosixPath
    source: str


@dataclass
class Discovery:
    """What :func:`discover` found: the inputs in processing order and notes about skipped files."""

    items: list[InputItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped_junk: int = 0
    skipped_other: int = 0


def is_image_name(name: str) -> bool:
    """True when ``name`` has an image extension (any case) and is not junk or a partial write."""
    return not _is_junk(name) and os.path.splitext(name.lower())[1] in IMAGE_EXTENSIONS


def _is_junk(name: str) -> bool:
    lower = name.lower()
    return lower in JUNK_NAMES or lower.startswith("._") or lower.endswith((PARTIAL_SUFFIX, CLAIM_SUFFIX))


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)


def read_path_list(lines: Iterable[str]) -> list[str]:
    """Paths from a newline-separated list: blank lines and ``#`` comments ignored, whitespace trimmed
    at the line ends (a path with leading/trailing spaces must be given as an argument instead, or the
    list NUL-separated: :func:`split_stdin`)."""
    out = []
    for line in lines:
        text = line.rstrip("\r\n").strip()
        if text and not text.startswith("#"):
            out.append(text)
    return out


def split_stdin(data: bytes, *, null: bool) -> list[str]:
    """The entries of a path list read from standard input as raw bytes, decoded like the file system's
    own names (``os.fsdecode``: bytes that are not valid UTF-8 survive as surrogate escapes and name the
    same file again).

    ``null=False``: lines split at ``\n`` only (a ``\r`` before it is dropped), for :func:`read_path_list`.
    ``null=True``: entries ended or separated by NUL bytes (``find -print0``), used exactly as given —
    newlines, tabs, quotes, leading spaces and ``#`` are part of the name; empty entries are ignored.
    """
    if null:
        return [os.fsdecode(entry) for entry in data.split(b"\0") if entry]
    return [os.fsdecode(line.removesuffix(b"\r")) for line in data.split(b"\n")]


def discover(
    sources: Iterable[str],
    *,
    recursive: bool = False,
    stdin_lines: Iterable[str] | None = None,
    exclude: Path | None = None,
    stdin_exact: bool = False,
) -> Discovery:
    """Expand command-line sources into input images.

    Args:
        sources: files, folders, globs, or ``"-"`` (paths from ``stdin_lines``).
        recursive: descend into folders (and let globs mirror their tree); output paths then mirror the
            relative tree. Without it, folders contribute their top-level images only.
        stdin_lines: the lines of standard input, required when ``"-"`` is among ``sources``.
        stdin_exact: ``stdin_lines`` are exact paths (a NUL-separated list), not lines to trim and
            filter with :func:`read_path_list`.
        exclude: a folder whose contents are not inputs (DEST: a re-run must not pick up its own earlier
            outputs, whether they are reached through a folder, a glob or a list on stdin). Files named
            one by one on the command line are always inputs, and when DEST is itself a source folder
            (or contains one) its files are the inputs.

    Order: sources in the order given; inside a folder or glob, sorted by relative path. A file reached
    twice (same real path) is processed once, at its first position.

    Raises:
        InputNotFoundError: a command-line source does not exist or a glob matches nothing.
        UsageError: ``"-"`` given twice.
    """
    found = Discovery()
    seen: set[str] = set()
    sources = list(sources)
    excluded = _excluded_root(sources, exclude)
    if sources.count("-") > 1:
        raise UsageError("'-' (read paths from stdin) can be given only once")

    def add(path: Path, relative: PurePosixPath, source: str, *, may_exclude: bool = True) -> None:
        real = os.path.realpath(path)
        if may_exclude and excluded and (real == excluded or real.startswith(excluded + os.sep)):
            return
        if real in seen:
            return
        seen.add(real)
        found.items.append(InputItem(path=path, relative=relative, source=source))

    for source in sources:
        if source == "-":
            if stdin_lines is None:
                raise UsageError("'-' needs a list of paths on standard input")
            for line in list(stdin_lines) if stdin_exact else read_path_list(stdin_lines):
                _add_listed_path(Path(line), found, add)
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            _add_folder(path, source, recursive, found, add)
        elif path.is_file():
            named = functools.partial(add, may_exclude=False)
            _add_file(path, PurePosixPath(path.name), source, found, named, explicit=True)
        elif _has_magic(source):
            _add_glob(source, recursive, found, add)
        elif path.exists():
            raise InputNotFoundError(f"not a file or folder: {source}")
        else:
            raise InputNotFoundError(f"no such file or folder: {source}")
    if found.skipped_junk:
        found.notes.append(f"skipped {found.skipped_junk} system file(s) (.DS_Store, Thumbs.db, ._*)")
    return found


def _excluded_root(sources: list[str], exclude: Path | None) -> str | None:
    """The real path of ``exclude`` (DEST), whose files are earlier outputs and never inputs — unless
    DEST is a source folder (or a glob's base folder) or contains one: then its files are the inputs
    (and writing over them is refused by the output plan)."""
    if exclude is None:
        return None
    dest = os.path.realpath(exclude)
    for source in sources:
        if source == "-":
            continue
        path = Path(source).expanduser()
        root = path if path.is_dir() else _glob_base(source) if _has_magic(source) and not path.exists() else None
        if root is None:
            continue
        real_root = os.path.realpath(root)
        if os.path.commonpath([dest, real_root]) == dest:  # DEST is this source root or an ancestor of it
            return None
    return dest


def _add_listed_path(path: Path, found: Discovery, add: _Add) -> None:
    """A path read from stdin: a file (image or not) or a folder (top level). A path that does not exist
    is still added, so the batch reports it as a failed input instead of stopping everything."""
    if path.is_dir():
        _add_folder(path, str(path), False, found, add)
    else:
        _add_file(path, PurePosixPath(path.name), "-", found, add, explicit=True, must_exist=False)


def _add_file(
    path: Path,
    relative: PurePosixPath,
    source: str,
    found: Discovery,
    add: _Add,
    *,
    explicit: bool,
    must_exist: bool = True,
) -> None:
    name = path.name
    if _is_junk(name):
        found.skipped_junk += 1
        return
    if not is_image_name(name):
        found.skipped_other += 1
        if explicit:
            found.notes.append(f"skipped {path}: not an image file extension")
        return
    add(path, relative, source)


def _add_folder(folder: Path, source: str, recursive: bool, found: Discovery, add: _Add) -> None:
    entries: list[tuple[PurePosixPath, Path]] = []
    subfolders = 0
    other = 0
    if recursive:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                full = Path(root) / name
                rel = PurePosixPath(full.relative_to(folder).as_posix())
                entries.append((rel, full))
    else:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir():
                    subfolders += 0 if entry.name.startswith(".") else 1
                elif entry.is_file():
                    entries.append((PurePosixPath(entry.name), Path(entry.path)))
    for rel, full in sorted(entries, key=lambda e: str(e[0])):
        if _is_junk(full.name):
            found.skipped_junk += 1
        elif not is_image_name(full.name):
            other += 1
        else:
            add(full, rel, source)
    found.skipped_other += other
    if other:
        found.notes.append(f"skipped {other} non-image file(s) in {source}")
    if subfolders:
        found.notes.append(f"{subfolders} sub-folder(s) of {source} not searched (use --recursive)")


def _add_glob(pattern: str, recursive: bool, found: Discovery, add: _Add) -> None:
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [Path(m) for m in matches if os.path.isfile(m)]
    if not files:
        raise InputNotFoundError(f"no files match {pattern!r}")
    base = _glob_base(pattern)
    before = found.skipped_other
    for path in files:
        if recursive:
            try:
                rel = PurePosixPath(path.resolve().relative_to(base.resolve()).as_posix())
            except ValueError:
                rel = PurePosixPath(path.name)
        else:
            rel = PurePosixPath(path.name)
        _add_file(path, rel, pattern, found, add, explicit=False)
    if found.skipped_other > before:
        found.notes.append(f"skipped {found.skipped_other - before} non-image file(s) matching {pattern!r}")


def _glob_base(pattern: str) -> Path:
    """The longest leading part of a glob pattern without wildcards (the folder outputs mirror from)."""
    parts = Path(os.path.expanduser(pattern)).parts
    base: list[str] = []
    for part in parts:
        if _has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")
