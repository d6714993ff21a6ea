"""Atomic outputs: no partial file is ever visible under a final name — not after Ctrl-C (a real SIGINT to a
real `cassr` process, and a KeyboardInterrupt in-process), and not after a write that fails with ENOSPC
(that image fails, the batch goes on, no litter)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import (
    cassr,
    decodes_completely,
    describe,
    partial_files,
    save_rgb,
    stdout_lines,
    write_identity_model,
)

import cassr_cli.runner.batch as runner_batch


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def finished_outputs(dest: Path) -> list[Path]:
    return sorted(p for p in dest.rglob("*") if p.is_file() and not p.name.endswith((".cassr-partial", ".cassr-claim")))


def test_sigint_mid_batch_exits_130_and_leaves_only_complete_files(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    for i in range(16):  # noise compresses badly: each 768×768 PNG takes a while to encode and write (16 so a
        # loaded machine, where the signal lands late, still has images left to interrupt)
        save_rgb(src / f"img{i}.png", h=192, w=192, seed=i)
    dest = tmp_path / "out"
    cmd = [sys.executable, "-m", "cassr_cli", "upscale", str(src), str(dest),
           "--activation", str(model), "--steps", "0"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSR_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not finished_outputs(dest):
            assert proc.poll() is None, f"cassr ended before the first output: {proc.communicate()}"
            assert time.monotonic() < deadline, "no output within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, f"exit {proc.returncode}\n{stdout}\n{stderr}"
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    written = finished_outputs(dest)
    assert 1 <= len(written) < 16, written
    assert all(decodes_completely(p) for p in written), written
    assert partial_files(dest) == []
    assert [Path(line) for line in stdout.splitlines()] == written  # every listed output exists, whole


def test_keyboard_interrupt_on_the_second_image_in_process(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_factory = runner_batch.default_pipeline_factory

    class InterruptOnSecond:
        def __init__(self, pipeline) -> None:  # noqa: ANN001
            self.pipeline, self.calls = pipeline, 0
            self.activation, self.diffusion = pipeline.activation, pipeline.diffusion

        def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return self.pipeline(*args, **kwargs)

    monkeypatch.setattr(runner_batch, "default_pipeline_factory", lambda config: InterruptOnSecond(real_factory(config)))
    src = tmp_path / "in"
    for i in range(4):
        save_rgb(src / f"{'abcd'[i]}.png", seed=i)
    dest = tmp_path / "out"
    result = cassr(["upscale", src, dest, "--activation", model, "--steps", "0"])
    assert result.exit_code == 130, describe(result)
    assert "interrupted" in result.stderr
    assert stdout_lines(result) == [str(dest / "a.png")]  # the write in flight landed, whole
    assert finished_outputs(dest) == [dest / "a.png"]
    assert decodes_completely(dest / "a.png")
    assert partial_files(dest) == []


@pytest.fixture
def disk_full_for_b(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The temporary file of b.png: half its bytes reach the disk, then the write fails with ENOSPC.
    Returns the temporary paths that were hit."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is written")
    real_fdopen = os.fdopen
    victims: list[str] = []

    class DiskFull:
        def __init__(self, f) -> None:  # noqa: ANN001
            self.f = f

        def __enter__(self) -> DiskFull:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.f, name)

    def fdopen(fd: int, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        f = real_fdopen(fd, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(".cassr-partial") and ".b.png." in target:
            victims.append(target)
            return DiskFull(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return victims


def abcd(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    for i, name in enumerate(("a.png", "b.png", "c.png", "d.png")):
        save_rgb(src / name, seed=i)
    return src


def test_write_failing_with_enospc_fails_that_image_only(tmp_path: Path, model: Path, disk_full_for_b: list[str]) -> None:
    src = abcd(tmp_path)
    dest = tmp_path / "out"
    result = cassr(["upscale", src, dest, "--activation", model, "--steps", "0"])
    assert disk_full_for_b, "the write of b.png was not intercepted"
    assert result.exit_code == 1, describe(result)
    assert stdout_lines(result) == [str(dest / n) for n in ("a.png", "c.png", "d.png")]
    assert finished_outputs(dest) == [dest / n for n in ("a.png", "c.png", "d.png")]
    assert partial_files(dest) == [] and not any(Path(v).exists() for v in disk_full_for_b)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert str(src / "b.png") in line and "No space left on device" in line
    assert "Traceback" not in result.stderr


def test_write_failure_with_fail_fast_writes_nothing_after_it(
    tmp_path: Path, model: Path, disk_full_for_b: list[str]
) -> None:
    src = abcd(tmp_path)
    dest = tmp_path / "out"
    result = cassr(["upscale", src, dest, "--activation", model, "--steps", "0", "--fail-fast"])
    assert result.exit_code == 1, describe(result)
    assert stdout_lines(result) == [str(dest / "a.png")]
    assert finished_outputs(dest) == [dest / "a.png"]
    assert partial_files(dest) == []
