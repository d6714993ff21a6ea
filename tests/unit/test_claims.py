"""Claims on outputs (io/claims.py): one holder at a time, stale claims (dead owner, expired lease, an
earlier attempt of the same run) taken over by exactly one of several takers, a fresh claim never stolen,
leases renewed, leftovers swept."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cassr_cli.io.claims import (
    ClaimOwner,
    Claims,
    _read,
    claim_path,
    release_claim,
    remove_temporaries,
    sweep,
)


def backdate(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def write_claim(output: Path, **fields: object) -> Path:
    owner = {"host": "elsewhere", "pid": 1, "instance": "", "token": "t" * 32, "run": None, "lease": 120.0}
    owner.update(fields)
    path = claim_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(owner) + "\n")
    return path


def owner_of(output: Path) -> ClaimOwner | None:
    on_disk = _read(claim_path(output))
    return None if on_disk is None else on_disk.owner


def test_one_holder_at_a_time_and_release_removes_the_claim(tmp_path: Path) -> None:
    output = tmp_path / "out" / "a.png"
    first, second = Claims(), Claims()
    claim = first.acquire(output)
    assert claim is not None
    assert claim.path == tmp_path / "out" / ".a.png.cassr-claim"
    owner = owner_of(output)
    assert owner is not None and owner.pid == os.getpid() and owner.token == claim.owner.token and owner.lease == 120.0
    assert second.acquire(output) is None  # a live holder (this very process, another batch)
    assert not second.is_free(output)
    first.release(claim)
    assert not claim.path.exists()
    assert second.acquire(output) is not None


def test_leaving_the_context_releases_everything(tmp_path: Path) -> None:
    with Claims() as claims:
        for name in ("a.png", "b.png"):
            assert claims.acquire(tmp_path / name) is not None
        assert len(list(tmp_path.glob(".*.cassr-claim"))) == 2
    assert list(tmp_path.iterdir()) == []


def test_claim_of_a_killed_process_on_this_host_is_taken_over_and_its_temporaries_removed(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    code = (
        "import os, signal, sys; from pathlib import Path; from cassr_cli.io.claims import Claims; "
        "c = Claims().acquire(Path(sys.argv[1])); assert c is not None; "
        "Path(sys.argv[1]).with_name('.a.png.0123abcd.cassr-partial').write_bytes(b'half'); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(output)], check=False)
    assert done.returncode == -signal.SIGKILL
    dead = owner_of(output)
    assert dead is not None and dead.pid != os.getpid()  # the child's claim, left behind
    assert (tmp_path / ".a.png.0123abcd.cassr-partial").exists()
    unrelated = tmp_path / ".a.png.x.0123abcd.cassr-partial"  # another output's temporary
    unrelated.write_bytes(b"x")
    claim = Claims().acquire(output)
    assert claim is not None and claim.owner.token != dead.token
    assert owner_of(output) == claim.owner
    assert not (tmp_path / ".a.png.0123abcd.cassr-partial").exists()
    assert unrelated.exists()


def test_live_claim_from_another_host_is_respected_until_its_lease_runs_out(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    path = write_claim(output, host="node-7", pid=os.getpid() + 100000, lease=60.0)
    claims = Claims()
    assert claims.acquire(output) is None  # a pid on another host is never checked here
    backdate(path, 30)
    assert claims.acquire(output) is None
    backdate(path, 61)
    claim = claims.acquire(output)
    assert claim is not None and owner_of(output) == claim.owner


def test_same_host_name_in_another_pid_namespace_is_not_judged_by_pid(tmp_path: Path) -> None:
    import socket

    output = tmp_path / "a.png"
    write_claim(output, host=socket.gethostname(), pid=2**22 + 12345, instance="other-boot/pid:[1]")
    assert Claims().acquire(output) is None


def test_empty_claim_is_young_until_the_lease_passes(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    path = claim_path(output)
    path.write_bytes(b"")  # a claimer that died between creating and writing its claim
    claims = Claims(lease=30)
    assert claims.acquire(output) is None
    backdate(path, 31)
    assert claims.acquire(output) is not None


def test_earlier_attempt_of_the_same_run_is_taken_over_at_once(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    write_claim(output, host="node-2", pid=4242, run="run-1")
    assert Claims(run="run-2").acquire(output) is None
    assert Claims().acquire(output) is None
    retry = Claims(run="run-1")
    claim = retry.acquire(output)
    assert claim is not None
    assert retry.acquire(output) is None  # but never from itself while it holds it


def test_a_fresh_claim_that_replaced_the_judged_one_is_given_back(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    stale_path = write_claim(output, host="gone", token="s" * 32)
    backdate(stale_path, 1000)
    taker = Claims()
    judged = _read(stale_path)
    assert judged is not None and taker.is_stale(judged)
    # Meanwhile another process took it over and holds a fresh claim.
    os.unlink(stale_path)
    fresh = Claims().acquire(output)
    assert fresh is not None
    assert taker._take_over(output, claim_path(output), judged) is None
    assert owner_of(output) == fresh.owner
    assert [p.name for p in tmp_path.iterdir()] == [".a.png.cassr-claim"]


def _take_over_round(output: str, start, end, tokens) -> None:  # noqa: ANN001
    claims = Claims()
    start.wait()
    claim = claims.acquire(Path(output))
    end.wait()  # nobody releases before everyone tried
    tokens.put(None if claim is None else claim.owner.token)


@pytest.mark.parametrize("kind", ["dead", "expired"])
def test_of_several_simultaneous_takers_exactly_one_wins(tmp_path: Path, kind: str) -> None:
    import socket

    from cassr_cli.io.claims import host_instance

    ctx = multiprocessing.get_context("fork")
    takers = 6
    for round_ in range(5):
        output = tmp_path / f"img{round_}.png"
        if kind == "dead":
            gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
            write_claim(output, host=socket.gethostname(), instance=host_instance(), pid=int(gone.stdout))
        else:
            backdate(write_claim(output), 500)
        start, end, queue = ctx.Barrier(takers), ctx.Barrier(takers), ctx.Queue()
        procs = [ctx.Process(target=_take_over_round, args=(str(output), start, end, queue)) for _ in range(takers)]
        for proc in procs:
            proc.start()
        tokens = [queue.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        winners = [t for t in tokens if t is not None]
        assert len(winners) == 1, tokens
        holder = owner_of(output)
        assert holder is not None and holder.token == winners[0]  # the winner exited without releasing
        assert not list(tmp_path.glob("*.cassr-partial")), list(tmp_path.iterdir())


def test_the_keeper_renews_the_lease_and_notices_a_take_over(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    with Claims(lease=0.4) as claims:
        claim = claims.acquire(output)
        assert claim is not None
        backdate(claim.path, 0.35)
        time.sleep(0.3)  # at least one renewal (every 0.1 s)
        assert time.time() - claim.path.stat().st_mtime < 0.3
        assert claims.holds(claim)
        # Another process takes it over (as after a lease that ran out while this one was frozen).
        os.unlink(claim.path)
        write_claim(output, token="x" * 32)
        assert not claims.holds(claim)
        time.sleep(0.2)
    assert owner_of(output) is not None and owner_of(output).token == "x" * 32  # not removed by the old owner


def test_release_claim_by_token_only(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    write_claim(output, token="a" * 32)
    release_claim(output, "b" * 32)
    assert claim_path(output).exists()
    release_claim(output, "a" * 32)
    assert not claim_path(output).exists()


def test_sweep_cleans_what_killed_processes_left(tmp_path: Path) -> None:
    done = tmp_path / "done.png"
    done.write_bytes(b"png")
    backdate(write_claim(done, token="d" * 32), 500)  # killed after its rename, before removing the claim
    live = tmp_path / "live.png"
    write_claim(live, token="l" * 32)
    live_tmp = tmp_path / ".live.png.00000000.cassr-partial"
    live_tmp.write_bytes(b"x")
    backdate(live_tmp, 500)
    old_tmp = tmp_path / ".gone.png.11111111.cassr-partial"
    old_tmp.write_bytes(b"x")
    backdate(old_tmp, 500)
    young_tmp = tmp_path / ".young.png.22222222.cassr-partial"
    young_tmp.write_bytes(b"x")
    aside = tmp_path / ".gone.png.stale-33333333.cassr-partial"
    aside.write_bytes(b"x")
    backdate(aside, 500)
    removed = sweep([tmp_path, tmp_path / "missing"], Claims())
    assert removed == 3
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["done.png", ".live.png.cassr-claim", live_tmp.name, young_tmp.name])


def test_remove_temporaries_only_touches_that_output(tmp_path: Path) -> None:
    for name in (".a.png.0123abcd.cassr-partial", ".a.png.ffffffff.cassr-partial", ".a.png.x.0123abcd.cassr-partial",
                 ".b.png.0123abcd.cassr-partial", "a.png"):  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    assert remove_temporaries(tmp_path / "a.png") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.png.x.0123abcd.cassr-partial", ".b.png.0123abcd.cassr-partial", "a.png"]


def test_attempts_count_up_only_within_one_run(tmp_path: Path) -> None:
    output = tmp_path / "a.png"
    write_claim(output, host="node-2", pid=4242, run="run-1", attempt=2)
    claim = Claims(run="run-1").acquire(output)
    assert claim is not None and claim.owner.attempt == 3  # a retry of the same run's image
    other = tmp_path / "b.png"
    backdate(write_claim(other, run="run-0", attempt=5), 500)
    claim = Claims(run="run-1").acquire(other)
    assert claim is not None and claim.owner.attempt == 1  # another run's leftovers start no count
    assert Claims().acquire(tmp_path / "c.png").owner.attempt == 1  # type: ignore[union-attr]
