"""`cassr upscale` under torchrun / accelerate launch (two CPU ranks): the bytes of one process, each stdout
record once as whole lines, one summary, the worst exit code on every rank, Ctrl-C stops every rank with
130 and no partial file.

torchrun and accelerate themselves turn any non-zero rank into their own exit 1 (with a report naming each
rank's code); the Ctrl-C and environment-error tests start the ranks as torchrun does (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) to see each rank's own exit code.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import (
    file_bytes,
    partial_files,
    save_rgb,
    single_run_outputs,
    write_identity_model,
    write_photos,
)

IMAGES = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = write_photos(tmp_path_factory.mktemp("in"), IMAGES, h=96, w=96)
    (src / "broken.png").write_bytes(b"not a png at all")
    return src


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, photos: Path, model: Path) -> dict[str, bytes]:
    return single_run_outputs(photos, tmp_path_factory.mktemp("reference"), model, exit_code=1)  # broken.png fails


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASSR_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_"))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "cassr_cli"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cassr_cli"],
}  # fmt: skip


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_ranks_write_single_process_bytes_and_print_each_record_once(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes], launcher: str
) -> None:
    dest = tmp_path / "out"
    cmd = [*LAUNCHERS[launcher], "upscale", str(photos), str(dest), "--activation", str(model), "--steps", "0", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environment(), check=False)
    # One bad image: each rank exits 1 (the merged code), so the launcher reports a failure.
    assert done.returncode != 0, done.stderr
    assert done.stdout.endswith("\n")
    records = [json.loads(line) for line in done.stdout.splitlines()]  # whole lines: each parses
    assert sorted(Path(r["input"]).name for r in records) == sorted([f"img{i}.png" for i in range(IMAGES)] + ["broken.png"])
    assert [r["status"] for r in records].count("ok") == IMAGES
    (bad,) = [r for r in records if r["status"] == "failed"]
    assert bad["input"].endswith("broken.png") and "not a recognised image" in bad["error"]
    assert file_bytes(dest) == reference
    assert partial_files(dest) == []
    assert done.stderr.count(f"{IMAGES} done · 0 skipped · 1 failed") == 1, done.stderr
    # Both ranks exited with the merged code 1, although only one of them met the broken image.
    if launcher == "torchrun":
        codes = re.findall(r"rank\s*:\s*(\d) \(local_rank: \d\)\s*\n\s*exitcode\s*:\s*(-?\d+)", done.stderr)
        assert codes and all(code == "1" for _, code in codes), done.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ranks(args: list[str], world: int = 2, per_rank: dict[int, dict[str, str]] | None = None) -> list[subprocess.Popen[str]]:
    """Start ``world`` ranks of ``cassr ARGS`` as torchrun would (rank 0 hosts the store)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=port, **(per_rank or {}).get(rank, {}))  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "cassr_cli", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))  # fmt: skip
    return procs


def test_ctrl_c_stops_every_rank_with_130_and_no_partial_file(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    for i in range(10):  # 768² noise PNGs: slow enough to interrupt mid-batch
        save_rgb(src / f"img{i}.png", h=192, w=192, seed=i)
    dest = tmp_path / "out"
    procs = start_ranks(["upscale", str(src), str(dest), "--activation", str(model), "--steps", "0"])
    try:
        deadline = time.monotonic() + 180
        while not [p for p in dest.glob("*.png")]:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "no output within 180 s"
            time.sleep(0.05)
        for proc in procs:  # a terminal's Ctrl-C reaches every process of the job
            proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        for proc in procs:  # and torchrun passes the signal on once more, as soon as it gets its own
            proc.send_signal(signal.SIGINT)
        outcomes = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    (out0, err0, code0), (out1, err1, code1) = outcomes
    assert (code0, code1) == (130, 130), outcomes
    assert out1 == "" and err1 == ""  # rank 0 speaks for the job
    written = sorted(p for p in dest.iterdir() if p.suffix == ".png")
    assert 1 <= len(written) < 10
    assert sorted(Path(line) for line in out0.splitlines()) == written  # every listed output is whole
    assert err0.count("interrupted") == 1 and "Traceback" not in err0
    assert partial_files(dest) == []


def test_worst_exit_code_of_all_ranks_and_each_error_once(tmp_path: Path, photos: Path, model: Path) -> None:
    dest = tmp_path / "out"
    args = ["upscale", str(photos), str(dest), "--activation", str(model), "--steps", "0", "--json"]
    procs = start_ranks(args, per_rank={1: {"CASSR_DEVICE": "cuda:7"}})  # rank 1's device does not exist
    outcomes = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    (out0, err0, code0), (out1, err1, code1) = outcomes
    assert (code0, code1) == (3, 3), outcomes  # 3 (rank 1, environment) beats 1 (rank 0, a bad image)
    assert err0.count("rank 1: device 'cuda:7' requested") == 1, err0
    records = [json.loads(line) for line in out0.splitlines()]
    assert len(records) == IMAGES + 1 and [r["status"] for r in records].count("ok") == IMAGES  # rank 0 did all
    assert out1 == ""
    assert partial_files(dest) == []
