"""stdout carries data only (output paths, or --json objects); everything for humans goes to stderr: notes,
failure lines, the summary, progress bars (only on a terminal); -q, -v and NO_COLOR behave."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import cassr, describe, json_lines, save_rgb, stdout_lines, write_identity_model

# SGR sequences that set a colour (foreground/background, 8/16/256/true colour)
COLOUR_SGR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-79]|4[0-79]|9[0-7]|10[0-7]|38;|48;)[0-9;]*m")
ANY_ESCAPE = "\x1b"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def mixed_batch(root: Path) -> Path:
    """Two good images, one bad one, junk and a sub-folder (so there are notes to print)."""
    src = root / "in"
    save_rgb(src / "a.png", seed=1)
    save_rgb(src / "c.jpg", seed=2)
    (src / "b.png").write_bytes(b"")
    (src / "notes.txt").write_text("hello")
    (src / ".DS_Store").write_bytes(b"\0")
    save_rgb(src / "sub" / "d.png")
    return src


def test_stdout_is_only_output_paths_even_verbose_with_failures(tmp_path: Path, model: Path) -> None:
    src = mixed_batch(tmp_path)
    result = cassr(["upscale", src, tmp_path / "out", "--activation", model, "--steps", "0", "-v"])
    assert result.exit_code == 1, describe(result)
    lines = result.stdout.splitlines()
    assert lines == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "c.jpg")]
    assert all(Path(line).is_file() for line in lines)
    # the human side is all on stderr
    assert "note:" in result.stderr and "failed:" in result.stderr and "2 done" in result.stderr


def test_console_script_stdout_purity(tmp_path: Path, model: Path) -> None:
    exe = shutil.which("cassr", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the cassr console script is not installed next to this Python")
    src = mixed_batch(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSR_")}
    proc = subprocess.run(
        [exe, "upscale", str(src), str(tmp_path / "out"), "--activation", str(model), "--steps", "0", "-v"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "c.jpg")], proc.stdout
    assert all(Path(line).is_file() for line in lines)
    assert "failed:" in proc.stderr and "Traceback" not in proc.stderr
    assert ANY_ESCAPE not in proc.stderr  # not a terminal: no colour, no progress bar


def test_json_lines_for_ok_skipped_and_failed(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    save_rgb(src / "a.png", seed=1)
    args = ["upscale", src, tmp_path / "out", "--activation", model, "--steps", "0"]
    assert cassr(args).exit_code == 0  # a.png exists now: skipped below
    save_rgb(src / "b.png", seed=2)
    (src / "c.png").write_bytes(b"")
    result = cassr([*args, "--json"])
    assert result.exit_code == 1, describe(result)
    records = json_lines(result)  # every stdout line parses
    assert len(records) == len(result.stdout.splitlines()) == 3
    by_name = {Path(r["input"]).name: r for r in records}
    for record in records:
        assert set(record) >= {"input", "output", "status", "seconds", "error", "stats"}
        assert isinstance(record["seconds"], (int, float)) and record["seconds"] >= 0
    skipped, ok, failed = by_name["a.png"], by_name["b.png"], by_name["c.png"]
    assert skipped["status"] == "skipped" and skipped["output"] == str(tmp_path / "out" / "a.png")
    assert ok["status"] == "ok" and ok["error"] is None and Path(ok["output"]).is_file()
    assert failed["status"] == "failed" and failed["output"] is None and failed["error"] == "empty file"
    stage = ok["stats"]["activation"]
    assert stage["tiles"] >= 1 and stage["seconds"] > 0
    assert "peak_memory_bytes" in stage and "oom_retries" in stage
    assert ok["stats"]["read"]["seconds"] >= 0 and ok["stats"]["write"]["seconds"] >= 0
    assert ok["stats"]["host_peak_rss_bytes"] > 0


def test_quiet_hides_notes_but_keeps_summary_and_failures(tmp_path: Path, model: Path) -> None:
    src = mixed_batch(tmp_path)
    result = cassr(["upscale", src, tmp_path / "out", "--activation", model, "--steps", "0", "-q"])
    assert result.exit_code == 1, describe(result)
    assert "note:" not in result.stderr
    assert "2 done · 0 skipped · 1 failed" in result.stderr
    assert f"{src / 'b.png'}: empty file" in result.stderr
    assert len(stdout_lines(result)) == 2


def test_not_a_terminal_no_progress_and_no_escapes(tmp_path: Path, model: Path) -> None:
    src = mixed_batch(tmp_path)
    result = cassr(["upscale", src, tmp_path / "out", "--activation", model, "--steps", "0"], env={"NO_COLOR": None})
    assert ANY_ESCAPE not in result.stderr
    assert "images" not in result.stderr and "━" not in result.stderr  # no progress bar


TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # Rich: treat stderr as a terminal


def test_terminal_shows_progress_and_colour(tmp_path: Path, model: Path) -> None:
    src = mixed_batch(tmp_path)
    result = cassr(
        ["upscale", src, tmp_path / "out", "--activation", model, "--steps", "0"], env={**TERMINAL, "NO_COLOR": None}
    )
    assert "images" in result.stderr  # the progress bar
    assert COLOUR_SGR.search(result.stderr), "expected colour on a terminal (else the NO_COLOR test proves nothing)"
    assert result.stdout.splitlines() == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "c.jpg")]


@pytest.mark.parametrize(("flag", "env"), [([], {"NO_COLOR": "1"}), (["--no-color"], {"NO_COLOR": None})])
def test_no_color_on_a_terminal(tmp_path: Path, model: Path, flag: list[str], env: dict) -> None:
    src = mixed_batch(tmp_path)
    result = cassr(["upscale", src, tmp_path / "out", "--activation", model, "--steps", "0", *flag], env={**TERMINAL, **env})
    assert "failed:" in result.stderr
    assert not COLOUR_SGR.search(result.stderr), repr(result.stderr)


@pytest.mark.parametrize("flag", ["-q", "--no-progress"])
def test_terminal_without_progress_when_asked(tmp_path: Path, model: Path, flag: str) -> None:
    src = mixed_batch(tmp_path)
    result = cassr(["upscale", src, tmp_path / "out", "--activation", model, "--steps", "0", flag], env=TERMINAL)
    assert "images" not in result.stderr
    assert "━" not in result.stderr
