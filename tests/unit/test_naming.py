"""Output naming (io/naming.py): same relative name, suffix, format extensions, collision handling,
refusing to overwrite inputs, and dropping earlier suffixed outputs found among the inputs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from cassr_cli.errors import OverwriteInputError, UsageError
from cassr_cli.io.discover import InputItem
from cassr_cli.io.naming import drop_previous_outputs, output_format, plan_outputs


def item(path: Path, relative: str | None = None) -> InputItem:
    return InputItem(path=path, relative=PurePosixPath(relative or path.name), source=str(path.parent))


def outputs(items: list[InputItem], dest: Path, suffix: str = "", fmt: str = "same") -> list[str]:
    return [str(p.output.relative_to(dest)) for p in plan_outputs(items, dest, suffix=suffix, fmt=fmt)]


@pytest.mark.parametrize(
    ("name", "requested", "expected"),
    [("a.JPG", "same", ("jpg", ".JPG")), ("a.jpeg", "same", ("jpg", ".jpeg")), ("a.TIF", "same", ("tiff", ".TIF")),
     ("a.png", "jpg", ("jpg", ".jpg")), ("a.png", "tiff", ("tiff", ".tiff")), ("a.bmp", "webp", ("webp", ".webp"))],
)  # fmt: skip
def test_output_format(name: str, requested: str, expected: tuple[str, str]) -> None:
    assert output_format(Path(name), requested) == expected


def test_same_format_of_an_unknown_extension_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown extension"):
        output_format(Path("a.gif"), "same")


def test_relative_tree_suffix_and_format(tmp_path: Path) -> None:
    items = [item(tmp_path / "in/x/a.jpg", "x/a.jpg"), item(tmp_path / "in/b.PNG", "b.PNG")]
    assert outputs(items, tmp_path / "out", suffix="_x4") == ["x/a_x4.jpg", "b_x4.PNG"]
    assert outputs(items, tmp_path / "out", fmt="webp") == ["x/a.webp", "b.webp"]


def test_collisions_get_distinct_names(tmp_path: Path) -> None:
    items = [
        item(tmp_path / "1/a.jpg"),
        item(tmp_path / "1/a.png"),
        item(tmp_path / "2/a.png"),
        item(tmp_path / "3/A.PNG"),
        item(tmp_path / "4/a.jpg"),
    ]
    planned = outputs(items, tmp_path / "out", fmt="png")
    assert len({name.lower() for name in planned}) == len(planned), planned  # case-insensitively distinct
    # an input already in the output's extension keeps the plain name; the JPEG namesake says what it was
    assert planned == ["a.jpg.png", "a.png", "a-2.png", "A-3.png", "a-4.png"]


def test_output_on_an_input_is_refused(tmp_path: Path) -> None:
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    with pytest.raises(OverwriteInputError, match="would overwrite the input"):
        plan_outputs([item(a)], tmp_path, suffix="", fmt="same")
    # via another input's name
    b = tmp_path / "b.jpg"
    b.write_bytes(b"x")
    c = tmp_path / "b.png"
    c.write_bytes(b"x")
    with pytest.raises(OverwriteInputError):
        plan_outputs([item(b), item(c)], tmp_path, suffix="", fmt="png")


def test_output_hard_linked_to_an_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in" / "a.png"
    src.parent.mkdir()
    src.write_bytes(b"x")
    (tmp_path / "out").mkdir()
    os.link(src, tmp_path / "out" / "a.png")
    with pytest.raises(OverwriteInputError):
        plan_outputs([item(src)], tmp_path / "out", suffix="", fmt="same")


def test_drop_previous_outputs(tmp_path: Path) -> None:
    a, a4, b = item(tmp_path / "a.png"), item(tmp_path / "a_x4.png"), item(tmp_path / "b.jpg")
    kept, dropped = drop_previous_outputs([a, a4, b], tmp_path, suffix="_x4", fmt="same")
    assert kept == [a, b] and dropped == [a4]
    # without a suffix nothing is taken for an earlier output
    assert drop_previous_outputs([a, a4, b], tmp_path, suffix="", fmt="same") == ([a, a4, b], [])
    # elsewhere than DEST nothing matches
    assert drop_previous_outputs([a, a4], tmp_path / "out", suffix="_x4", fmt="same")[1] == []
