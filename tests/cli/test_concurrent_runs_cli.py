"""Concurrent `cassr upscale` processes on one DEST (claims, io/claims.py): every image done once in total
with the bytes of a single run, claimed outputs reported as skipped, a killed process's claim taken over,
nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import (
    cassr,
    describe,
    file_bytes,
    json_lines,
    partial_files,
    single_run_outputs,
    stdout_lines,
    write_identity_model,
    write_photos,
)

IMAGES = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # noise: each 640² PNG takes a moment to encode, so the processes overlap
    return write_photos(tmp_path_factory.mktemp("in"), IMAGES, h=160, w=160, name="img{i:02d}.png")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, photos: Path, model: Path) -> dict[str, bytes]:
    return single_run_outputs(photos, tmp_path_factory.mktemp("reference"), model)


def command(src: Path, dest: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cassr_cli", "upscale", str(src), str(dest), "--activation", str(model), "--steps", "0", *extra]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSR_")}
    return {**env, "OMP_NUM_THREADS": "1"}


def run_together(commands: list[list[str]]) -> list[tuple[int, str, str]]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()) for c in commands]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        outcomes.append((proc.returncode, out, err))
    return outcomes


def check_each_image_once(outcomes: list[tuple[int, str, str]], dest: Path, reference: dict[str, bytes]) -> list[int]:
    """Every process exits 0 and reports every image once; the ok records cover each image exactly once;
    DEST holds the single-run bytes and nothing else. Returns how many images each process did."""
    done: list[str] = []
    per_process = []
    for code, out, err in outcomes:
        assert code == 0, f"exit {code}\n{out}\n{err}"
        records = [json.loads(line) for line in out.splitlines()]
        assert sorted(Path(r["input"]).name for r in records) == sorted(f"img{i:02d}.png" for i in range(IMAGES))
        ok = [r for r in records if r["status"] == "ok"]
        assert all(r["status"] == "ok" or r["error"] in ("in progress elsewhere", "output exists",
                   "written by another process of this run") for r in records), records  # fmt: skip
        done += [Path(r["output"]).name for r in ok]
        per_process.append(len(ok))
    assert sorted(done) == sorted(reference), f"images done {sorted(done)} (each must appear once)"
    assert file_bytes(dest) == reference
    return per_process


def test_three_processes_at_once_do_each_image_once_with_single_run_bytes(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes]
) -> None:
    # Each image once with single-run bytes, in every attempt. Whether a second process gets any work depends
    # on start-up timing (on a loaded machine one process can finish all 12 images before the others have
    # imported torch), so sharing must show in one of three attempts.
    shares = []
    for attempt in range(3):
        dest = tmp_path / f"out{attempt}"
        outcomes = run_together([command(photos, dest, model, "--json")] * 3)
        per_process = check_each_image_once(outcomes, dest, reference)
        assert partial_files(dest) == []
        shares.append(per_process)
        if sum(1 for n in per_process if n) >= 2:
            break
    else:
        raise AssertionError(f"the work was not shared in any attempt: {shares}")


def test_two_processes_with_overwrite_still_do_each_image_once(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes]
) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    for name in reference:  # earlier outputs, to be replaced
        (dest / name).write_bytes(b"old")
        os.utime(dest / name, (time.time() - 3600, time.time() - 3600))
    outcomes = run_together([command(photos, dest, model, "--json", "--overwrite")] * 2)
    check_each_image_once(outcomes, dest, reference)
    assert partial_files(dest) == []


def test_claim_of_a_killed_process_is_taken_over_by_the_next_run(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes]
) -> None:
    dest = tmp_path / "out"
    proc = subprocess.Popen(command(photos, dest, model), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment())
    try:
        deadline = time.monotonic() + 120
        while not list(dest.glob(".*.cassr-claim")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no claim within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = list(dest.glob(".*.cassr-claim"))
    assert left, "the killed process left no claim (nothing to take over)"
    result = cassr(["upscale", photos, dest, "--activation", model, "--steps", "0", "--json"])
    assert result.exit_code == 0, describe(result)
    records = json_lines(result)
    assert not [r for r in records if r["error"] == "in progress elsewhere"], records
    assert file_bytes(dest) == reference
    assert partial_files(dest) == []


def test_output_claimed_by_a_live_process_elsewhere_is_skipped_as_in_progress(
    tmp_path: Path, photos: Path, model: Path
) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    claim = dest / ".img03.png.cassr-claim"
    owner = {"host": socket.gethostname() + "-other", "pid": 1, "instance": "", "token": "f" * 32, "run": None, "lease": 120.0}
    claim.write_text(json.dumps(owner))
    result = cassr(["upscale", photos, dest, "--activation", model, "--steps", "0", "--json"])
    assert result.exit_code == 0, describe(result)
    (record,) = [r for r in json_lines(result) if r["input"].endswith("img03.png")]
    assert record["status"] == "skipped" and record["error"] == "in progress elsewhere", record
    assert record["output"] == str(dest / "img03.png")
    assert not (dest / "img03.png").exists()
    assert json.loads(claim.read_text())["token"] == "f" * 32  # not touched
    assert "in progress elsewhere" in result.stderr  # the summary says why
    plain = cassr(["upscale", photos, tmp_path / "plain", "--activation", model, "--steps", "0"])
    assert len(stdout_lines(plain)) == IMAGES


def test_a_claim_that_cannot_be_written_fails_that_image_and_the_batch_goes_on(
    tmp_path: Path, photos: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import cassr_cli.io.claims as claims

    real_write = claims.os.write
    calls = {"n": 0}

    def full_disk_on_third_claim(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(claims.os, "write", full_disk_on_third_claim)
    dest = tmp_path / "out"
    result = cassr(["upscale", photos, dest, "--activation", model, "--steps", "0", "--json"])
    assert result.exit_code == 1, describe(result)
    records = json_lines(result)
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["error"].startswith(f"cannot claim {dest / 'img02.png'}: No space left on device")
    assert [r["status"] for r in records].count("ok") == IMAGES - 1
    assert partial_files(dest) == []
