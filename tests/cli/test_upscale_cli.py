"""`cassr upscale` through the real command: sources (files, folders, globs, stdin), case-insensitive
extensions, junk, duplicates, order, --recursive mirroring, output naming (--suffix, --format, --quality),
collisions, skip/overwrite/resume and never overwriting an input.

Stage 1 only (``--steps 0``) with an identity-like ×4 model (see cli_support), so every output can be
checked against its own input pixel for pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import typer.testing
from cli_support import cassr, describe, json_lines, save_rgb, stdout_lines, write_identity_model
from PIL import Image


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def run(model: Path, *args: str | Path, input: str | None = None):  # noqa: ANN201
    return cassr(["upscale", *args, "--activation", model, "--steps", "0"], input=input)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def assert_upscaled_from(output: Path, source: Path, scale: int = 4) -> None:
    """``output`` is ``source`` upscaled ×scale by the identity model (lossless formats only)."""
    expected = pixels(source).repeat(scale, 0).repeat(scale, 1)
    got = pixels(output)
    assert got.shape == expected.shape, f"{output}: {got.shape} != {expected.shape}"
    assert np.array_equal(got, expected), f"{output} is not {source} upscaled"


# --- sources -------------------------------------------------------------------------------------------

EXTENSIONS = ["a.png", "b.JPG", "c.Png", "d.TIFF", "e.jpeg", "f.webp", "g.bmp", "h.Tif"]
JUNK = [".DS_Store", "Thumbs.db", "._img.jpg", "notes.txt"]


def test_folder_with_mixed_case_extensions_and_junk(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    for i, name in enumerate(EXTENSIONS):
        save_rgb(src / name, seed=i)
    for name in JUNK:
        (src / name).write_bytes(b"not an image")
    result = run(model, src, tmp_path / "out")
    assert result.exit_code == 0, describe(result)
    # every image, in sorted order, same relative name (extension case kept), nothing else on stdout
    assert stdout_lines(result) == [str(tmp_path / "out" / n) for n in sorted(EXTENSIONS)]
    for name in EXTENSIONS:
        with Image.open(tmp_path / "out" / name) as im:
            assert im.size == (64, 48)
    # junk: skipped with a note, not a failure
    assert "skipped 3 system file(s)" in result.stderr
    assert "skipped 1 non-image file(s)" in result.stderr
    assert "0 failed" in result.stderr and "8 done" in result.stderr
    assert not (tmp_path / "out" / "notes.txt").exists()


def test_explicit_files_in_argv_order(tmp_path: Path, model: Path) -> None:
    b = save_rgb(tmp_path / "b.png", seed=1)
    a = save_rgb(tmp_path / "a.png", seed=2)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    result = run(model, b, notes, a, tmp_path / "out")
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "b.png"), str(tmp_path / "out" / "a.png")]
    assert f"skipped {notes}: not an image file extension" in result.stderr
    assert_upscaled_from(tmp_path / "out" / "b.png", b)
    assert_upscaled_from(tmp_path / "out" / "a.png", a)


def test_glob_is_expanded_by_the_command(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    for name in ("x2.png", "x1.png", "y.jpg"):
        save_rgb(src / name)
    result = run(model, str(src / "*.png"), tmp_path / "out")  # passed literally, as a quoted shell glob
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "x1.png"), str(tmp_path / "out" / "x2.png")]
    assert not (tmp_path / "out" / "y.jpg").exists()


def test_stdin_list_ignores_blank_lines_and_comments(tmp_path: Path, model: Path) -> None:
    a = save_rgb(tmp_path / "in" / "a.png", seed=1)
    b = save_rgb(tmp_path / "in" / "b.png", seed=2)
    save_rgb(tmp_path / "in" / "c.png", seed=3)  # not listed: not processed
    listing = f"# my list\n\n{b}\n   \n# {tmp_path / 'in' / 'c.png'}\n{a}\n"
    result = run(model, "-", tmp_path / "out", input=listing)
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "b.png"), str(tmp_path / "out" / "a.png")]
    assert not (tmp_path / "out" / "c.png").exists()


def test_stdin_missing_path_fails_alone(tmp_path: Path, model: Path) -> None:
    a = save_rgb(tmp_path / "a.png")
    missing = tmp_path / "gone.png"
    result = run(model, "-", tmp_path / "out", input=f"{missing}\n{a}\n")
    assert result.exit_code == 1, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "a.png")]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert line == f"failed: {missing}: cannot read file (No such file or directory)"


def test_stdin_list_that_reaches_dest_resumes(tmp_path: Path, model: Path) -> None:
    """`find . -name '*.png' | cassr upscale - up/` run twice: the second listing includes up/a.png, an
    earlier output, which must not be taken for an input (nor refused as overwriting one)."""
    a = save_rgb(tmp_path / "a.png")
    dest = tmp_path / "up"
    first = run(model, "-", dest, input=f"{a}\n")
    assert first.exit_code == 0, describe(first)
    second = run(model, "-", dest, input=f"{a}\n{dest / 'a.png'}\n")
    assert second.exit_code == 0, describe(second)
    assert "1 skipped" in second.stderr and not (dest / "a-2.png").exists()


def test_a_file_named_in_dest_is_still_an_input(tmp_path: Path, model: Path) -> None:
    """A file given by name is always an input, even inside DEST (here it would be overwritten: refused)."""
    dest = tmp_path / "out"
    inside = save_rgb(dest / "x.png")
    result = run(model, inside, dest)
    assert result.exit_code == 2 and "would overwrite the input" in result.stderr, describe(result)
    with_suffix = run(model, inside, dest, "--suffix", "_x4")
    assert with_suffix.exit_code == 0 and (dest / "x_x4.png").exists(), describe(with_suffix)


def test_stdin_dash_with_a_terminal_is_a_usage_error(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_rgb(tmp_path / "a.png")
    # CliRunner replaces sys.stdin with this wrapper; make it claim to be a terminal
    # (Typer >= 0.17 carries its own copy of Click's testing module; older Typer uses Click's)
    wrapper = getattr(typer.testing, "_NamedTextIOWrapper", None)
    if wrapper is None:
        import click.testing

        wrapper = click.testing._NamedTextIOWrapper
    monkeypatch.setattr(wrapper, "isatty", lambda self: True, raising=False)
    result = run(model, "-", tmp_path / "out", input="")
    assert result.exit_code == 2, describe(result)
    assert "standard input is a terminal" in result.stderr
    assert not (tmp_path / "out").exists()


def test_duplicates_are_processed_once(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    a = save_rgb(src / "a.png")
    other = tmp_path / "other"
    other.mkdir()
    (other / "link.png").symlink_to(a)
    result = run(model, src, a, other / "link.png", "-", tmp_path / "out", input=f"{a}\n")
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "a.png")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    assert "1 done" in result.stderr


# --- recursion --------------------------------------------------------------------------------------------


def make_tree(root: Path) -> list[str]:
    names = ["top.png", "2023/jan/x.png", "2023/y.jpg", "2024/x.png"]
    for i, name in enumerate(names):
        save_rgb(root / name, seed=i)
    return names


def test_recursive_mirrors_the_tree(tmp_path: Path, model: Path) -> None:
    names = make_tree(tmp_path / "in")
    result = run(model, tmp_path / "in", tmp_path / "out", "--recursive")
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / n) for n in sorted(names)]
    for name in names:
        if name.endswith(".png"):
            assert_upscaled_from(tmp_path / "out" / name, tmp_path / "in" / name)
        else:
            assert (tmp_path / "out" / name).is_file()


def test_without_recursive_subfolders_are_not_searched(tmp_path: Path, model: Path) -> None:
    make_tree(tmp_path / "in")
    result = run(model, tmp_path / "in", tmp_path / "out")
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "top.png")]
    assert "2 sub-folder(s)" in result.stderr and "--recursive" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["top.png"]


def test_dest_inside_the_source_folder_is_not_picked_up_again(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    save_rgb(src / "a.png")
    save_rgb(src / "sub" / "b.png", seed=1)
    dest = src / "upscaled"
    first = run(model, src, dest, "--recursive")
    assert first.exit_code == 0, describe(first)
    assert stdout_lines(first) == [str(dest / "a.png"), str(dest / "sub" / "b.png")]
    second = run(model, src, dest, "--recursive", "--json")
    assert second.exit_code == 0, describe(second)
    records = json_lines(second)
    assert [r["input"] for r in records] == [str(src / "a.png"), str(src / "sub" / "b.png")]
    assert {r["status"] for r in records} == {"skipped"}
    assert not (dest / "upscaled").exists()
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == ["a.png", "sub/b.png"]


# --- output names and formats -----------------------------------------------------------------------------


def test_suffix(tmp_path: Path, model: Path) -> None:
    a = save_rgb(tmp_path / "a.png")
    result = run(model, a, tmp_path / "out", "--suffix", "_x4")
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "a_x4.png")]
    assert_upscaled_from(tmp_path / "out" / "a_x4.png", a)


@pytest.mark.parametrize(
    ("fmt", "ext", "pillow_format"),
    [("png", ".png", "PNG"), ("jpg", ".jpg", "JPEG"), ("webp", ".webp", "WEBP"), ("tiff", ".tiff", "TIFF")],
)
def test_format_writes_that_format(tmp_path: Path, model: Path, fmt: str, ext: str, pillow_format: str) -> None:
    src = save_rgb(tmp_path / "photo.bmp")
    result = run(model, src, tmp_path / "out", "--format", fmt)
    assert result.exit_code == 0, describe(result)
    out = tmp_path / "out" / f"photo{ext}"
    assert stdout_lines(result) == [str(out)]
    with Image.open(out) as im:
        assert im.format == pillow_format  # the bytes, not just the name
        assert im.size == (64, 48)
    if fmt in ("png", "tiff"):
        assert_upscaled_from(out, src)


def test_format_same_keeps_each_inputs_format(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    save_rgb(src / "a.webp", quality=100, lossless=True)
    save_rgb(src / "b.tif")
    result = run(model, src, tmp_path / "out", "--format", "same")
    assert result.exit_code == 0, describe(result)
    with Image.open(tmp_path / "out" / "a.webp") as im:
        assert im.format == "WEBP"
    with Image.open(tmp_path / "out" / "b.tif") as im:
        assert im.format == "TIFF"


def test_quality_changes_jpeg_size(tmp_path: Path, model: Path) -> None:
    src = save_rgb(tmp_path / "noise.png", h=32, w=32)
    low = run(model, src, tmp_path / "low", "--format", "jpg", "--quality", "10")
    high = run(model, src, tmp_path / "high", "--format", "jpg", "--quality", "95")
    assert low.exit_code == high.exit_code == 0, describe(low) + describe(high)
    small = (tmp_path / "low" / "noise.jpg").stat().st_size
    big = (tmp_path / "high" / "noise.jpg").stat().st_size
    assert small < big / 2, (small, big)


def test_same_stem_different_format_gets_distinct_outputs(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    jpg = save_rgb(src / "a.jpg", seed=1, quality=100)
    png = save_rgb(src / "a.png", seed=2)
    result = run(model, src, tmp_path / "out", "--format", "png")
    assert result.exit_code == 0, describe(result)
    outputs = [Path(line) for line in stdout_lines(result)]
    assert len(outputs) == 2 and len(set(outputs)) == 2, outputs
    assert all(p.parent == tmp_path / "out" and p.suffix == ".png" for p in outputs), outputs
    assert_upscaled_from(outputs[0], jpg)
    assert_upscaled_from(outputs[1], png)


def test_two_folders_same_name_flat_get_distinct_outputs(tmp_path: Path, model: Path) -> None:
    first = save_rgb(tmp_path / "d1" / "x.png", seed=1)
    second = save_rgb(tmp_path / "d2" / "x.png", seed=2)
    result = run(model, tmp_path / "d1", tmp_path / "d2", tmp_path / "out")
    assert result.exit_code == 0, describe(result)
    outputs = [Path(line) for line in stdout_lines(result)]
    assert len(set(outputs)) == 2 and all(p.parent == tmp_path / "out" for p in outputs), outputs
    assert_upscaled_from(outputs[0], first)
    assert_upscaled_from(outputs[1], second)


# --- skip, overwrite, resume ------------------------------------------------------------------------------


def test_existing_outputs_are_skipped_untouched_and_overwrite_redoes_them(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        save_rgb(src / name, seed=i)
    out = tmp_path / "out"
    assert run(model, src, out).exit_code == 0
    # make the existing outputs recognisable: different bytes, an old mtime
    (out / "b.png").write_bytes((src / "b.png").read_bytes())
    os.utime(out / "b.png", ns=(1_000_000_000, 1_000_000_000))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}

    again = run(model, src, out)
    assert again.exit_code == 0, describe(again)  # skips count as success
    assert stdout_lines(again) == []
    assert "0 done · 3 skipped · 0 failed" in again.stderr
    assert "--overwrite" in again.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before

    (out / "c.png").unlink()  # an interrupted batch: resume writes only what is missing
    resumed = run(model, src, out)
    assert resumed.exit_code == 0, describe(resumed)
    assert stdout_lines(resumed) == [str(out / "c.png")]
    assert (out / "b.png").stat().st_mtime_ns == 1_000_000_000
    assert_upscaled_from(out / "c.png", src / "c.png")

    forced = run(model, src, out, "--overwrite")
    assert forced.exit_code == 0, describe(forced)
    assert stdout_lines(forced) == [str(out / n) for n in ("a.png", "b.png", "c.png")]
    assert_upscaled_from(out / "b.png", src / "b.png")


def test_dest_equal_to_source_never_overwrites_inputs(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    for i, name in enumerate(("a.png", "b.jpg")):
        save_rgb(src / name, seed=i)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    result = run(model, src, src, "--overwrite")
    assert result.exit_code == 2, describe(result)
    assert "would overwrite the input" in result.stderr
    assert result.stdout == ""
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    # with a suffix the outputs have their own names: allowed
    ok = run(model, src, src, "--suffix", "_x4")
    assert ok.exit_code == 0, describe(ok)
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a_x4.png", "b.jpg", "b_x4.jpg"]
    assert {n: (src / n).read_bytes() for n in before} == before
    # a re-run does not upscale its own outputs (no a_x4_x4.png) and reports the rest as skipped
    rerun = run(model, src, src, "--suffix", "_x4", "--json")
    assert rerun.exit_code == 0, describe(rerun)
    assert [(r["input"], r["status"]) for r in json_lines(rerun)] == [
        (str(src / "a.png"), "skipped"),
        (str(src / "b.jpg"), "skipped"),
    ]
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a_x4.png", "b.jpg", "b_x4.jpg"]


def test_dest_that_contains_the_source_folder(tmp_path: Path, model: Path) -> None:
    a = save_rgb(tmp_path / "photos" / "raw" / "a.png")
    result = run(model, tmp_path / "photos" / "raw", tmp_path / "photos")
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "photos" / "a.png")]
    assert_upscaled_from(tmp_path / "photos" / "a.png", a)
