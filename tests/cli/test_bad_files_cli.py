"""Bad inputs in a batch with good ones, through `cassr upscale`: corrupt, truncated, empty, non-image with an
image extension, decompression bombs (hand-written header and a lowered --max-pixels), outputs too large
for host memory. Each is one clear line on stderr naming the file once, the good images are written, and
the exit code is 1; --fail-fast stops at the first failure.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cli_support import (
    bomb_png,
    cassr,
    describe,
    encoded,
    json_lines,
    partial_files,
    png_chunk,
    rgb8,
    save_rgb,
    stdout_lines,
    write_identity_model,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def run(model: Path, *args: str | Path):  # noqa: ANN201
    return cassr(["upscale", *args, "--activation", model, "--steps", "0"])


def failure_lines(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("failed:") and str(path) in line]


def corrupt_png() -> bytes:
    """A PNG with a valid header and chunk CRCs whose image data is not zlib data."""
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    garbage = bytes(range(256)) * 4
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", garbage) + png_chunk(b"IEND", b"")


def test_bad_files_fail_one_line_each_and_good_ones_are_written(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good_png = encoded("PNG", rgb8(16, 16, 1))
    good_jpg = encoded("JPEG", rgb8(64, 64, 2), quality=90)  # big enough that half cuts the scan data
    save_rgb(src / "a_good.png", seed=1)
    bad = {
        "b_corrupt.png": corrupt_png(),
        "c_half.png": good_png[: len(good_png) // 2],
        "d_half.jpg": good_jpg[: len(good_jpg) // 2],
        "e_empty.png": b"",
        "f_text.jpg": b"this is not a JPEG at all\n" * 20,
    }
    for name, data in bad.items():
        (src / name).write_bytes(data)
    bomb_png(src / "g_bomb.png")
    save_rgb(src / "h_good.jpg", seed=2)

    result = run(model, src, tmp_path / "out", "--json")
    assert result.exit_code == 1, describe(result)
    records = {Path(r["input"]).name: r for r in json_lines(result)}
    assert records["a_good.png"]["status"] == "ok" and records["h_good.jpg"]["status"] == "ok"
    assert (tmp_path / "out" / "a_good.png").is_file() and (tmp_path / "out" / "h_good.jpg").is_file()

    expected = {
        "b_corrupt.png": "corrupt",
        "c_half.png": "truncated",
        "d_half.jpg": "truncated",
        "e_empty.png": "empty file",
        "f_text.jpg": "not a recognised image",
        "g_bomb.png": "100000×100000 is 10000.0 megapixels, more than the limit",
    }
    for name, words in expected.items():
        record = records[name]
        path = src / name
        assert record["status"] == "failed" and record["output"] is None
        assert words in record["error"], (name, record["error"])
        assert str(path) not in record["error"], f"the error repeats the path: {record['error']}"
        lines = failure_lines(result.stderr, path)
        assert len(lines) == 1, result.stderr
        assert lines[0].count(str(path)) == 1, f"path named twice: {lines[0]}"
        assert not (tmp_path / "out" / name).exists()
    assert "--max-pixels" in records["g_bomb.png"]["error"]  # the hint says how to raise the limit
    assert "Traceback" not in result.stderr
    assert "2 done · 0 skipped · 6 failed" in result.stderr
    assert partial_files(tmp_path / "out") == []


def test_lowered_max_pixels_refuses_and_can_be_raised(tmp_path: Path, model: Path) -> None:
    big = save_rgb(tmp_path / "big.png", h=20, w=20)  # 400 px
    small = save_rgb(tmp_path / "small.png", h=10, w=10)  # 100 px
    result = run(model, big, small, tmp_path / "out", "--max-pixels", "300")
    assert result.exit_code == 1, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "small.png")]
    (line,) = failure_lines(result.stderr, big)
    assert "more than the limit" in line and "--max-pixels" in line
    raised = run(model, big, tmp_path / "out", "--max-pixels", "400")
    assert raised.exit_code == 0, describe(raised)


def test_output_too_large_for_host_memory_is_refused(tmp_path: Path, model: Path) -> None:
    a = save_rgb(tmp_path / "a.png")
    result = run(model, a, tmp_path / "out", "--max-host-memory-gb", "0.00001", "--json")
    assert result.exit_code == 1, describe(result)
    (record,) = json_lines(result)
    assert record["status"] == "failed"
    assert "host memory" in record["error"] and "64×48" in record["error"]
    assert not (tmp_path / "out" / "a.png").exists()
    (line,) = failure_lines(result.stderr, a)
    assert "Traceback" not in result.stderr


def test_fail_fast_stops_at_the_first_failure(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    save_rgb(src / "a.png", seed=1)
    (src / "b.png").write_bytes(b"")
    save_rgb(src / "c.png", seed=2)
    save_rgb(src / "d.png", seed=3)
    result = run(model, src, tmp_path / "out", "--fail-fast")
    assert result.exit_code == 1, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "a.png")]
    assert not (tmp_path / "out" / "c.png").exists() and not (tmp_path / "out" / "d.png").exists()
    assert len(failure_lines(result.stderr, src / "b.png")) == 1
    # without it the batch goes on
    tail = run(model, src, tmp_path / "out2")
    assert tail.exit_code == 1
    assert len(stdout_lines(tail)) == 3
