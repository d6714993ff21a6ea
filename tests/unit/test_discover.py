"""Input discovery (io/discover.py): path lists, extensions, junk, order, de-duplication, globs, and which
DEST folders are excluded from the inputs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from cassr_cli.errors import InputNotFoundError, UsageError
from cassr_cli.io.discover import discover, is_image_name, read_path_list


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def names(found) -> list[str]:  # noqa: ANN001
    return [str(item.relative) for item in found.items]


def test_read_path_list() -> None:
    lines = ["# header\r\n", "a.png\r\n", "\n", "   \n", "  b c.jpg  \n", "#x.png", "d.png"]
    assert read_path_list(lines) == ["a.png", "b c.jpg", "d.png"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a.PNG", True), ("a.Jpeg", True), ("a.JPE", True), ("a.tif", True), ("a.TIFF", True), ("a.WebP", True),
        ("a.bmp", True), ("a.gif", False), ("a.txt", False), ("png", False), (".DS_Store", False),
        ("Thumbs.db", False), ("._a.jpg", False), (".a.png.1234abcd.cassr-partial", False), (".a.png.cassr-claim", False), ("desktop.ini", False),
    ],
)  # fmt: skip
def test_is_image_name(name: str, ok: bool) -> None:
    assert is_image_name(name) is ok


def test_folder_sorted_junk_and_notes(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "c.txt", ".DS_Store", "._a.JPG", ".x.png.ab12.cassr-partial"):
        touch(tmp_path / "in" / name)
    touch(tmp_path / "in" / "sub" / "d.png")
    touch(tmp_path / "in" / ".hidden" / "e.png")
    found = discover([str(tmp_path / "in")])
    assert names(found) == ["a.JPG", "b.png"]
    assert found.skipped_junk == 3 and found.skipped_other == 1
    assert any("sub-folder(s)" in note and "--recursive" in note for note in found.notes)


def test_recursive_mirrors_and_skips_hidden_folders(tmp_path: Path) -> None:
    for rel in ("z.png", "b/y.png", "a/c/x.png", ".git/q.png"):
        touch(tmp_path / "in" / rel)
    found = discover([str(tmp_path / "in")], recursive=True)
    assert names(found) == ["a/c/x.png", "b/y.png", "z.png"]
    assert found.items[0].relative == PurePosixPath("a/c/x.png")


def test_sources_in_argv_order_first_position_wins(tmp_path: Path) -> None:
    a = touch(tmp_path / "d1" / "a.png")
    touch(tmp_path / "d1" / "b.png")
    z = touch(tmp_path / "z.png")
    os.symlink(a, tmp_path / "alias.png")
    found = discover([str(z), str(tmp_path / "d1"), str(a), str(tmp_path / "alias.png")])
    assert [item.path.name for item in found.items] == ["z.png", "a.png", "b.png"]


def test_globs_flat_and_recursive(tmp_path: Path) -> None:
    for rel in ("x/1.png", "x/y/2.png", "x/y/3.jpg"):
        touch(tmp_path / rel)
    flat = discover([str(tmp_path / "x" / "**" / "*.png")])
    assert names(flat) == ["1.png", "2.png"]
    mirrored = discover([str(tmp_path / "x" / "**" / "*.png")], recursive=True)
    assert names(mirrored) == ["1.png", "y/2.png"]
    with pytest.raises(InputNotFoundError, match="no files match"):
        discover([str(tmp_path / "x" / "*.webp")])


def test_stdin_lines(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.png")
    touch(tmp_path / "folder" / "b.png")
    missing = tmp_path / "missing.png"
    found = discover(["-"], stdin_lines=["# list\n", f"{a}\n", f"{tmp_path / 'folder'}\n", f"{missing}\n", "notes.txt\n"])
    # a missing listed file is kept: it fails alone later instead of stopping the batch
    assert [item.path for item in found.items] == [a, tmp_path / "folder" / "b.png", missing]
    assert any("not an image file extension" in note for note in found.notes)
    with pytest.raises(UsageError, match="only once"):
        discover(["-", "-"], stdin_lines=[])
    with pytest.raises(UsageError):
        discover(["-"], stdin_lines=None)


def test_missing_sources(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="no such file or folder"):
        discover([str(tmp_path / "nope")])


def test_dest_strictly_inside_a_source_is_excluded(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "out" / "a.png")
    found = discover([str(tmp_path / "in")], recursive=True, exclude=tmp_path / "in" / "out")
    assert names(found) == ["a.png"]


def test_dest_equal_to_or_containing_a_source_is_not_excluded(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.png")
    assert names(discover([str(tmp_path / "in")], exclude=tmp_path / "in")) == ["a.png"]
    assert names(discover([str(tmp_path / "in")], exclude=tmp_path)) == ["a.png"]
    assert names(discover([str(tmp_path / "in" / "*.png")], exclude=tmp_path / "in")) == ["a.png"]
