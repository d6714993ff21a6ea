"""Pairing HR references with their LR inputs, in the layouts SR test sets come in. Torch-free.

An LR file pairs with an HR file in the same relative folder when their names match after dropping
the layout's marker:

* the same name: ``HR/a/img.png`` ↔ ``LR/a/img.png`` (extensions may differ);
* ``X_HR.ext`` ↔ ``X_LR.ext`` (Set5/Set14/BSD100 ``image_SRF_4`` folders; HR and LR may be one folder);
* ``X.ext`` ↔ ``Xx4.ext`` (DIV2K ``X4/0801x4.png``, ``LR_bicubic/X4/babyx4.png``). An LR folder that
  holds an ``X4`` (or ``LR_bicubic/X4``) folder for the scale is searched there.

Files named ``*_LR`` are never references and ``*_HR`` never inputs, so one folder can hold both. Every
HR file must find exactly one LR file and every LR file its HR file; all that do not are named in one
usage error, before any work starts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from cassr_cli.errors import UsageError
from cassr_cli.io.discover import InputItem, discover

_HR_MARK = re.compile(r"[_-]HR$", re.IGNORECASE)
_LR_MARK = re.compile(r"[_-]LR$", re.IGNORECASE)
_SHOWN = 8
"""How many names an error lists before "and N more"."""


@dataclass(frozen=True)
class EvalImage:
    """One image of an evaluation.

    Attributes:
        name: its name in every report and output folder (the HR's relative path without the layout
            marker, e.g. ``img_001_SRF_4.png``); also the key of the per-image seeds.
        hr: the reference file (None with ``--no-reference``).
        lr: the input file (None until ``--degrade`` has written it).
    """

    name: PurePosixPath
    hr: Path | None
    lr: Path | None

    def with_lr(self, lr: Path) -> EvalImage:
        return replace(self, lr=lr)


@dataclass
class Pairing:
    """The images of an evaluation and notes about files left out."""

    images: list[EvalImage]
    notes: list[str]


def pair_images(
    hr_source: str, lr_source: str, *, scale: int, recursive: bool = False, exclude: Path | None = None
) -> Pairing:
    """Pair every HR image with its LR input (module docstring). Files under ``exclude`` (OUT, whose
    images are earlier outputs) are never inputs.

    Raises:
        InputNotFoundError: a source does not exist or matches nothing.
        UsageError: images that do not pair (all named), or ambiguous pairs.
    """
    hr_items, notes = reference_items(hr_source, recursive=recursive, exclude=exclude)
    lr_root = _lr_root(lr_source, scale)
    lr_found = discover([lr_root], recursive=recursive, exclude=exclude)
    lr_items = [i for i in lr_found.items if not _HR_MARK.search(_stem(i.relative))]
    by_key: dict[tuple[str, str], list[InputItem]] = defaultdict(list)
    for item in lr_items:
        for key in _lr_keys(item.relative, scale):
            by_key[key].append(item)
    images: list[EvalImage] = []
    used: set[Path] = set()
    unpaired_hr: list[str] = []
    ambiguous: list[str] = []
    for item in hr_items:
        name = reference_name(item.relative)
        matches = list(dict.fromkeys(by_key.get(_key(name), [])))
        if not matches:
            unpaired_hr.append(str(item.relative))
        elif len(matches) > 1:
            ambiguous.append(f"{item.relative} ({', '.join(str(m.relative) for m in matches)})")
        else:
            used.add(matches[0].path)
            images.append(EvalImage(name, item.path, matches[0].path))
    unpaired_lr = [str(i.relative) for i in lr_items if i.path not in used]
    problems = []
    if unpaired_hr:
        problems.append(f"{len(unpaired_hr)} HR image(s) without an LR image: {_names(unpaired_hr)}")
    if unpaired_lr:
        problems.append(f"{len(unpaired_lr)} LR image(s) without an HR image: {_names(unpaired_lr)}")
    if ambiguous:
        problems.append(f"{len(ambiguous)} HR image(s) match several LR images: {_names(ambiguous)}")
    if problems:
        raise UsageError(
            "images do not pair: " + "; ".join(problems),
            hint="LR files pair with HR files by relative name, as X_HR/X_LR, or as X/Xx4 (see docs/quality.md)",
        )
    _check_unique(images)
    return Pairing(images, notes + lr_found.notes)


def reference_items(
    source: str, *, recursive: bool = False, exclude: Path | None = None
) -> tuple[list[InputItem], list[str]]:
    """The HR images of ``source`` (``*_LR`` files are left out, with a note; nothing under ``exclude``)."""
    found = discover([source], recursive=recursive, exclude=exclude)
    items = [i for i in found.items if not _LR_MARK.search(_stem(i.relative))]
    notes = list(found.notes)
    if len(items) < len(found.items):
        notes.append(f"left out {len(found.items) - len(items)} *_LR file(s) found with the HR images")
    return items, notes


def unpaired_images(
    source: str, *, with_reference: bool, recursive: bool = False, exclude: Path | None = None
) -> Pairing:
    """The images of ``source`` alone: HR references to degrade (``with_reference``), or the inputs of
    a no-reference evaluation."""
    items, notes = reference_items(source, recursive=recursive, exclude=exclude)
    if with_reference:
        images = [EvalImage(reference_name(i.relative), i.path, None) for i in items]
    else:
        images = [EvalImage(i.relative, None, i.path) for i in items]
    _check_unique(images)
    return Pairing(images, notes)


def reference_name(relative: PurePosixPath) -> PurePosixPath:
    """The image's report name: its relative path with a trailing ``_HR`` dropped from the stem."""
    stem = _HR_MARK.sub("", _stem(relative)) or _stem(relative)
    return relative.with_name(stem + relative.suffix)


def _stem(path: PurePosixPath) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _key(name: PurePosixPath) -> tuple[str, str]:
    return (str(name.parent), _stem(name))


def _lr_keys(relative: PurePosixPath, scale: int) -> list[tuple[str, str]]:
    """The HR names an LR file can pair with: its own stem, without ``_LR``, without ``x{scale}``."""
    stem = _stem(relative)
    parent = str(relative.parent)
    keys = [stem]
    if _LR_MARK.search(stem):
        keys.append(_LR_MARK.sub("", stem))
    suffix = f"x{scale}"
    if stem.lower().endswith(suffix) and len(stem) > len(suffix):
        keys.append(stem[: -len(suffix)])
    return [(parent, k) for k in dict.fromkeys(keys)]


def _lr_root(source: str, scale: int) -> str:
    """``source``, or its ``X{scale}`` / ``LR_bicubic/X{scale}`` sub-folder when it has one."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return source
    for candidate in (f"X{scale}", f"x{scale}", f"LR_bicubic/X{scale}", f"LR_bicubic/x{scale}"):
        if (path / candidate).is_dir():
            return str(path / candidate)
    return source


def _check_unique(images: Sequence[EvalImage]) -> None:
    seen: dict[str, EvalImage] = {}
    clashes = []
    for image in images:
        key = str(image.name.with_suffix("")).lower()
        if key in seen:
            clashes.append(f"{seen[key].name} and {image.name}")
        seen[key] = image
    if clashes:
        raise UsageError(
            f"images share a name (outputs are PNG files named after the image): {_names(clashes)}",
            hint="rename one of each pair, or evaluate them separately",
        )


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
