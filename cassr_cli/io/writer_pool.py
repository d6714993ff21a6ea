"""Encoding and writing outputs on several threads, finished in the order they were submitted.

With ``--steps 0`` a GPU produces images faster than one thread can PNG-encode them (about 0.36 s per
2048² image), so the runner hands each finished image to a :class:`WriterPool` and goes on with the next
one. Up to ``workers`` writes run at once (Pillow's encoders and zlib release the GIL, so threads scale
with cores); :meth:`WriterPool.submit` returns the writes that must be finished to keep no more than that
in flight, oldest first, and :meth:`WriterPool.drain` all of them, so results are recorded in submission
order whatever order the threads finish in. Each pending write holds one output image in host memory.
Torch-free.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MAX_AUTO_WRITERS = 4


def writer_count(requested: int) -> int:
    """``requested`` writers, or for 0 (auto) one per CPU core up to :data:`MAX_AUTO_WRITERS`."""
    if requested > 0:
        return requested
    return max(1, min(MAX_AUTO_WRITERS, os.cpu_count() or 1))


class WriterPool(Generic[T]):
    """A thread pool for writes whose results are taken in submission order.

    Args:
        workers: threads (and writes in flight at most).
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"need at least one writer, got {workers}")
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cassr-write")
        self._pending: deque[tuple[T, Future[Any]]] = deque()

    def submit(self, tag: T, write: Callable[..., Any], *args: Any) -> list[tuple[T, Future[Any]]]:
        """Start ``write(*args)``; returns ``(tag, future)`` of the oldest writes to finish now so that at
        most ``workers`` stay in flight (finish them in the order given)."""
        self._pending.append((tag, self._executor.submit(write, *args)))
        due = []
        while len(self._pending) > self.workers:
            due.append(self._pending.popleft())
        return due

    def drain(self) -> Iterator[tuple[T, Future[Any]]]:
        """Every pending write, oldest first (the caller waits on each future in turn)."""
        while self._pending:
            yield self._pending.popleft()

    def __len__(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        """Wait for writes in flight; writes not started are cancelled."""
        self._executor.shutdown(wait=True, cancel_futures=True)
