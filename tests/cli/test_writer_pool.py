"""Several writer threads: the same output bytes and the same order of records as one writer; the pool
itself returns writes in submission order whatever order they finish in."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from cli_support import cassr, describe, json_lines, save_rgb, write_identity_model

from cassr_cli.io.writer_pool import WriterPool, writer_count


def test_pool_returns_writes_in_submission_order_with_at_most_workers_in_flight():
    pool: WriterPool[int] = WriterPool(3)
    running, peak, lock = [0], [0], threading.Lock()

    def write(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 * (5 - i % 5))  # later writes finish first
        with lock:
            running[0] -= 1
        return i

    order = []
    for i in range(8):
        for tag, future in pool.submit(i, write, i):
            order.append((tag, future.result()))
        assert len(pool) <= 3
    order += [(tag, future.result()) for tag, future in pool.drain()]
    pool.shutdown()
    assert order == [(i, i) for i in range(8)]
    assert peak[0] > 1  # they did overlap


def test_writer_count():
    assert writer_count(3) == 3
    assert 1 <= writer_count(0) <= 4


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_several_writers_keep_bytes_and_record_order(tmp_path: Path, fmt: str):
    model = write_identity_model(tmp_path / "identity_x4.pth")
    src = tmp_path / "in"
    for i in range(7):
        save_rgb(src / f"img{i}.png", 24 + 4 * i, 32, seed=i)
    (src / "broken.png").write_bytes(b"not an image")  # a failed record in the middle of the order
    runs = {}
    for writers in (1, 4):
        dest = tmp_path / f"out{writers}"
        result = cassr(["upscale", src, dest, "--activation", model, "--steps", "0", "--json", "-f", fmt, "--writers", str(writers)])
        assert result.exit_code == 1, describe(result)  # the broken input
        runs[writers] = (json_lines(result), {p.name: p.read_bytes() for p in sorted(dest.iterdir())})
    (records_1, files_1), (records_4, files_4) = runs[1], runs[4]
    assert [(r["input"], r["status"]) for r in records_4] == [(r["input"], r["status"]) for r in records_1]
    assert [r["status"] for r in records_1].count("failed") == 1
    assert files_4 == files_1 and len(files_1) == 7
