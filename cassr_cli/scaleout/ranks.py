"""Ranks of ``torchrun`` / ``accelerate launch``: one batch, many processes, one stdout.

Every rank runs the whole plan; claims (``io/claims.py``) decide which rank computes which image, so
fast ranks take more. Only rank 0 writes stdout: the other ranks send each result record to it through
the launcher's key-value store (the ``torch.distributed`` TCPStore named by ``MASTER_ADDR`` and
``MASTER_PORT``), and :class:`RecordMerger` keeps, per input, the one record a single process would
have printed. At the end each rank reports its exit code; rank 0 prints one summary and every rank
exits with the worst code.

Store keys (under ``cassr-upscale/<restart count>/``): ``msg/<rank>/<n>`` the n-th message of a rank
(JSON: a record, or its final ``done`` message), ``count/<rank>`` how many it sent, ``beat/<rank>`` a
heartbeat counter, ``shared/<name>`` values rank 0 decides for all (stdin, start time), ``final`` the
merged exit code, ``acks`` how many ranks have read it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cassr_cli.errors import EnvironmentNotReadyError, UsageError

if TYPE_CHECKING:
    from cassr_cli.runner import ImageResult

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05
BEAT_SECONDS = 2.0
SILENT_RANK_SECONDS = 120.0
"""A rank whose heartbeat has not moved for this long is given up on (its node died)."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits among the launcher's processes."""

    rank: int
    world_size: int
    local_rank: int


def detect_ranks(env: Mapping[str, str] | None = None) -> RankInfo | None:
    """The rank of this process when a launcher started several (``WORLD_SIZE`` > 1, as torchrun and
    ``accelerate launch`` set it), else None. Torch-free."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1") or "1")
        if world <= 1:
            return None
        rank = int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank) or rank)
    except (KeyError, ValueError) as err:
        raise EnvironmentNotReadyError(
            f"WORLD_SIZE is set but RANK/LOCAL_RANK are not usable ({err})",
            hint="start several processes with torchrun or accelerate launch",
        ) from None
    return RankInfo(rank=rank, world_size=world, local_rank=local)


def rank_device(device: str, local_rank: int) -> str:
    """The device of a rank: ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` (modulo the visible GPUs) or
    the CPU when there is no GPU; a device list gives each rank its entry ``LOCAL_RANK`` (modulo the list);
    an explicit device is kept."""
    if "," in device:
        names = [name.strip() for name in device.split(",")]
        return names[local_rank % len(names)]
    if device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        if device == "cuda":
            return device  # let device selection explain that CUDA is missing
        return "cpu"
    return f"cuda:{local_rank % torch.cuda.device_count()}"


# --- merging records ---------------------------------------------------------------------------------------

_SKIP_PREFERENCE = ("output exists", "written by another process of this run", "in progress elsewhere")


class RecordMerger:
    """One record per input out of every rank's records.

    Each rank reports every planned input: the rank that computed it says ``ok`` or ``failed``, the others
    ``skipped`` (in progress elsewhere / output exists). ``ok`` and ``failed`` are final and are passed on
    at once; an input only ever skipped is passed on when all ranks have reported it (or at the end,
    :meth:`flush`), with the most telling reason.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._skips: dict[str, list[ImageResult]] = {}
        self._settled: set[str] = set()
        self.results: list[ImageResult] = []

    def add(self, result: ImageResult) -> ImageResult | None:
        """The record to print now for ``result``, or None (a duplicate or an undecided skip)."""
        key = result.input
        if key in self._settled:
            return None
        if result.status != "skipped":
            return self._settle(key, result)
        skips = self._skips.setdefault(key, [])
        skips.append(result)
        if len(skips) >= self.world_size:
            return self._settle(key, _preferred_skip(skips))
        return None

    def flush(self) -> list[ImageResult]:
        """The undecided skips (only left when some rank stopped early), in the order first seen. Inputs
        only ever reported as in progress elsewhere are dropped: most likely the rank that stopped was
        computing them, and a single interrupted process would not list them either."""
        out = []
        for key, skips in list(self._skips.items()):
            chosen = _preferred_skip(skips)
            if chosen.error == "in progress elsewhere":
                self._skips.pop(key)
            else:
                out.append(self._settle(key, chosen))
        return out

    def _settle(self, key: str, result: ImageResult) -> ImageResult:
        self._settled.add(key)
        self._skips.pop(key, None)
        self.results.append(result)
        return result


def _preferred_skip(skips: list[ImageResult]) -> ImageResult:
    def rank(result: ImageResult) -> int:
        reason = result.error or ""
        return _SKIP_PREFERENCE.index(reason) if reason in _SKIP_PREFERENCE else len(_SKIP_PREFERENCE)

    return min(skips, key=rank)


# --- the link between ranks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RankOutcome:
    """How one rank ended: its exit code, whether it was interrupted, and its error line if any."""

    rank: int
    code: int
    interrupted: bool = False
    error: str | None = None
    hint: str | None = None


class RankLink:
    """Messages between the ranks over the launcher's store. Store I/O runs on one helper thread per
    process (``start``); the main thread only queues messages and waits for the end."""

    def __init__(self, store: Any, info: RankInfo) -> None:
        self.store = store
        self.info = info
        self._outbox: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._outcomes: dict[int, RankOutcome] = {}
        self._lock = threading.Lock()
        self._failure: BaseException | None = None

    @classmethod
    def connect(cls, info: RankInfo) -> RankLink:
        """Join the launcher's store (``MASTER_ADDR``/``MASTER_PORT``; rank 0 hosts it unless the
        launcher's agent does)."""
        try:
            import torch.distributed as dist

            store, _, _ = next(dist.rendezvous("env://"))
            prefix = f"cassr-upscale/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
            return cls(dist.PrefixStore(prefix, store), info)
        except (RuntimeError, ValueError, OSError) as err:
            raise EnvironmentNotReadyError(
                f"rank {info.rank} cannot reach the other ranks: {err}",
                hint="check MASTER_ADDR/MASTER_PORT (set by torchrun / accelerate launch)",
            ) from None

    # --- values rank 0 decides ---------------------------------------------------------------------------
    def shared(self, name: str, produce: Callable[[], str]) -> str:
        """A value rank 0 computes once (e.g. the stdin list) and every rank receives. A UsageError or
        EnvironmentNotReadyError of rank 0's ``produce`` is raised on every rank."""
        key = f"shared/{name}"
        if self.info.rank == 0:
            try:
                value = produce()
            except (UsageError, EnvironmentNotReadyError) as err:
                self.store.set(key, json.dumps({"error": err.message, "hint": err.hint, "usage": isinstance(err, UsageError)}))
                raise
            self.store.set(key, json.dumps({"value": value}))
            return value
        while not self.store.check([key]):
            time.sleep(POLL_SECONDS)
        message = json.loads(self.store.get(key))
        if "error" in message:
            kind = UsageError if message["usage"] else EnvironmentNotReadyError
            raise kind(message["error"], hint=message["hint"])
        return str(message["value"])

    # --- ranks ≠ 0: send --------------------------------------------------------------------------------
    def start_sending(self) -> None:
        self._thread = threading.Thread(target=self._send_loop, name="cassr-rank-send", daemon=True)
        self._thread.start()

    def send(self, record: dict[str, Any]) -> None:
        self._outbox.put(json.dumps({"record": record}))

    def finish(self, outcome: RankOutcome, *, timeout: float | None = None) -> tuple[int, bool]:
        """Send this rank's outcome, then wait for rank 0's merged exit code. Returns ``(code, True)``,
        or ``(this rank's code, False)`` when rank 0 cannot be reached."""
        self._outbox.put(json.dumps({"done": outcome.__dict__}))
        self._outbox.put(None)
        if self._thread is not None:
            self._thread.join()
        if self._failure is not None:
            return outcome.code, False
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.store.check(["final"]):
                if deadline is not None and time.monotonic() > deadline:
                    return outcome.code, False
                time.sleep(POLL_SECONDS)
            code = int(self.store.get("final"))
            self.store.add("acks", 1)
            return code, True
        except (RuntimeError, OSError, ValueError):  # the store is gone: rank 0 ended without us
            logger.debug("no merged exit code from rank 0", exc_info=True)
            return outcome.code, False

    def _send_loop(self) -> None:
        rank = self.info.rank
        sent = 0
        last_beat = 0.0
        try:
            while True:
                if time.monotonic() - last_beat >= BEAT_SECONDS:
                    self.store.add(f"beat/{rank}", 1)
                    last_beat = time.monotonic()
                try:
                    message = self._outbox.get(timeout=BEAT_SECONDS)
                except queue.Empty:
                    continue
                if message is None:
                    return
                sent += 1
                self.store.set(f"msg/{rank}/{sent}", message)
                self.store.add(f"count/{rank}", 1)
        except (RuntimeError, OSError) as err:  # the store went away: nothing more can be delivered
            self._failure = err
            logger.debug("rank %d lost the store", rank, exc_info=True)

    # --- rank 0: receive --------------------------------------------------------------------------------
    def start_receiving(self, deliver: Callable[[dict[str, Any]], None]) -> None:
        """Poll every other rank's messages on a helper thread; ``deliver`` gets each record (from that
        thread, in each rank's order)."""
        self._thread = threading.Thread(target=self._receive_loop, args=(deliver,), name="cassr-rank-recv", daemon=True)
        self._thread.start()

    def wait_for_ranks(self) -> list[RankOutcome]:
        """Block until every other rank has sent its outcome (or went silent); their outcomes."""
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(timeout=0.2)
        with self._lock:
            return [self._outcomes[r] for r in sorted(self._outcomes)]

    def publish_final(self, code: int, *, ack_timeout: float = 10.0) -> None:
        """Tell every rank the merged exit code and wait (briefly) until they have read it: when rank 0
        hosts the store, it must outlive their reads."""
        self.store.set("final", str(code))
        deadline = time.monotonic() + ack_timeout
        others = self.info.world_size - 1
        with self._lock:
            reachable = sum(1 for o in self._outcomes.values() if o.error != _SILENT)
        while int(self.store.add("acks", 0)) < min(others, reachable) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)

    def _receive_loop(self, deliver: Callable[[dict[str, Any]], None]) -> None:
        others = range(1, self.info.world_size)
        read = dict.fromkeys(others, 0)
        beats = {r: (-1, time.monotonic()) for r in others}
        try:
            while len(self._outcomes) < len(read):
                progressed = False
                for rank in others:
                    if rank in self._outcomes:
                        continue
                    count = int(self.store.add(f"count/{rank}", 0))
                    while read[rank] < count:
                        read[rank] += 1
                        key = f"msg/{rank}/{read[rank]}"
                        message = json.loads(self.store.get(key))
                        self.store.delete_key(key)
                        progressed = True
                        if "done" in message:
                            self._set_outcome(RankOutcome(**message["done"]))
                            break
                        deliver(message["record"])
                    beat = int(self.store.add(f"beat/{rank}", 0))
                    if beat != beats[rank][0]:
                        beats[rank] = (beat, time.monotonic())
                    elif time.monotonic() - beats[rank][1] > SILENT_RANK_SECONDS and rank not in self._outcomes:
                        self._set_outcome(RankOutcome(rank, 1, error=_SILENT))
                if not progressed:
                    time.sleep(POLL_SECONDS)
        except (RuntimeError, OSError) as err:
            self._failure = err
            logger.debug("rank 0 lost the store", exc_info=True)
            for rank in others:
                if rank not in self._outcomes:
                    self._set_outcome(RankOutcome(rank, 1, error=_SILENT))

    def _set_outcome(self, outcome: RankOutcome) -> None:
        with self._lock:
            self._outcomes[outcome.rank] = outcome


_SILENT = "stopped responding (its process or node died); rerun the batch to finish its images"
