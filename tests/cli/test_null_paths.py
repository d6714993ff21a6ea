"""Path protocols for file names with newlines, tabs, quotes and bytes that are not UTF-8: ``-0``/``--null``
reads NUL-separated paths from stdin, ``--print0`` writes NUL-ended output paths, ``--json`` carries the
exact bytes of a non-UTF-8 path in base64, and the default newline output never splits one path in two."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cli_support import describe, save_rgb, write_identity_model
from typer.testing import CliRunner, Result

from cassr_cli.cli.app import app
from cassr_cli.io.discover import split_stdin

ODD_NAMES = [
    "a b\nc.png",  # a newline: two "lines" for any newline protocol
    "tab\there.png",
    "quote's \"double\".png",
    " leading space.png",
    "#not a comment.png",
    os.fsdecode(b"latin1 caf\xe9.png"),  # not UTF-8: a surrogate escape in Python
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def run(args: list[str | Path], stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], input=stdin)


def make_inputs(folder: Path, names: list[str]) -> list[Path]:
    paths = []
    for seed, name in enumerate(names):
        save_rgb(folder / "tmp.png", seed=seed)
        os.rename(folder / "tmp.png", folder / name)  # any bytes the file system takes
        paths.append(folder / name)
    return paths


def test_null_in_print0_out_round_trips_odd_names(tmp_path: Path, model: Path) -> None:
    paths = make_inputs(tmp_path / "in", ODD_NAMES)
    stdin = b"".join(os.fsencode(p) + b"\0" for p in paths)
    out = tmp_path / "out"
    result = run(["upscale", "-0", "-", out, "--print0", "--activation", model, "--steps", "0"], stdin=stdin)
    assert result.exit_code == 0, describe(result)
    printed = result.stdout_bytes.split(b"\0")
    assert printed[-1] == b""  # every path is ended by a NUL, the last one too
    assert sorted(printed[:-1]) == sorted(os.fsencode(out / name) for name in ODD_NAMES)
    assert all(os.path.isfile(raw) for raw in printed[:-1])  # the exact bytes name the written files
    assert b"\n" not in result.stdout_bytes.replace(os.fsencode(out / ODD_NAMES[0]), b"")


def test_newline_output_never_splits_a_path(tmp_path: Path, model: Path) -> None:
    make_inputs(tmp_path / "in", ["a b\nc.png", "plain.png", os.fsdecode(b"caf\xe9.png")])
    out = tmp_path / "out"
    result = run(["upscale", tmp_path / "in", out, "--activation", model, "--steps", "0"])
    assert result.exit_code == 0, describe(result)
    # the path with a line break is left out (and said so), the others are printed as exact bytes
    assert result.stdout_bytes.split(b"\n") == [os.fsencode(out / "caf\udce9.png"), os.fsencode(out / "plain.png"), b""]
    assert (out / "a b\nc.png").is_file()
    assert "a b\\nc.png" in result.stderr and "--print0" in result.stderr


def test_json_carries_non_utf8_paths_reversibly(tmp_path: Path, model: Path) -> None:
    (source,) = make_inputs(tmp_path / "in", [os.fsdecode(b"caf\xe9 \xff.png")])
    out = tmp_path / "out"
    result = run(["upscale", tmp_path / "in", out, "--json", "--activation", model, "--steps", "0"])
    assert result.exit_code == 0, describe(result)
    (record,) = [json.loads(line) for line in result.stdout_bytes.decode("utf-8").splitlines()]
    assert record["input"] == str(source).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    assert "\ufffd" in record["input"]
    assert base64.b64decode(record["input_bytes"]) == os.fsencode(source)
    assert os.path.isfile(base64.b64decode(record["output_bytes"]))
    assert base64.b64decode(record["output_bytes"]) == os.fsencode(out / source.name)


def test_json_of_utf8_paths_has_no_bytes_fields(tmp_path: Path, model: Path) -> None:
    make_inputs(tmp_path / "in", ["tab\there é.png"])
    result = run(["upscale", tmp_path / "in", tmp_path / "out", "--json", "--activation", model, "--steps", "0"])
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["input"].endswith("tab\there é.png") and "input_bytes" not in record


def test_newline_stdin_reads_non_utf8_names(tmp_path: Path, model: Path) -> None:
    (source,) = make_inputs(tmp_path / "in", [os.fsdecode(b"caf\xe9.png")])
    out = tmp_path / "out"
    result = run(["upscale", "-", out, "--activation", model, "--steps", "0"], stdin=os.fsencode(source) + b"\n")
    assert result.exit_code == 0, describe(result)
    assert result.stdout_bytes == os.fsencode(out / source.name) + b"\n"


def test_split_stdin_keeps_names_exactly() -> None:
    assert split_stdin(b"a\nb c\r\n#x\n", null=False) == ["a", "b c", "#x", ""]
    assert split_stdin(b" a\nb\0\0#c\0\xff", null=True) == [" a\nb", "#c", "\udcff"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-0", "in.png", "out"], "add '-' to the sources"),
        (["in.png", "out", "--print0", "--json"], "choose one"),
    ],
)
def test_null_options_misused_are_usage_errors(
    tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_rgb(tmp_path / "in.png")
    monkeypatch.chdir(tmp_path)  # the working directory of the tests after this one stays as it was
    result = run(["upscale", *args])
    assert result.exit_code == 2, describe(result)
    assert message in result.stderr
