"""Several devices in one process: with ``--device A,B`` and several images, one pipeline per device, each
on its own thread, each taking the next image when it is free. Claims, writes, records and their order are
those of the one-pipeline loop (``runner/batch.py``); the steps of each image are ``runner/per_image.py``'s.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING

from cassr_cli.config import UpscaleConfig
from cassr_cli.io.claims import Claim
from cassr_cli.io.naming import PlannedOutput
from cassr_cli.io.writer_pool import WriterPool, writer_count
from cassr_cli.runner.per_image import Encoded, Work, compute, deliver, finish_write, read_input
from cassr_cli.runner.records import BatchEvents, BatchSummary, ImageResult

if TYPE_CHECKING:
    from cassr_cli.engine.pipeline import CassrPipeline


def device_configs(config: UpscaleConfig, images: int) -> list[UpscaleConfig]:
    """The pipelines a batch of ``images`` runs on, as configs: with a device list and several images, one
    pipeline per device (each on one device); otherwise one pipeline (with a list, that one image spreads
    its diffusion tiles over the devices)."""
    devices = config.devices
    if len(devices) > 1 and images > 1:
        return [config.replace(device=name) for name in devices]
    return [config]


class _Cancelled(BaseException):
    """Raised in a device's thread to stop its image: the batch is stopping (Ctrl-C, ``fail_fast``, an
    environment error). Not an image failure, so it passes the per-image ``except Exception``."""


class _StopCheck:
    """The events a device's thread gets: stage progress only checks whether to stop (the view follows
    one image at a time, so several devices' stages are not shown)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        if self.stop.is_set():
            raise _Cancelled


def process_on_devices(
    work: Work,
    first: tuple[PlannedOutput, Claim],
    config: UpscaleConfig,
    pipelines: Sequence[CassrPipeline],
    events: BatchEvents,
    summary: BatchSummary,
) -> None:
    """Several images on several devices: one pipeline per device, each on its own thread, each taking
    the next image when it is free (claimed just then, as with one pipeline). Writes, records and their
    order are the one-pipeline loop's: computed images are delivered in the order they were taken."""
    n = len(pipelines)
    reader = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cassr-read")
    computers = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cassr-device")
    writers: WriterPool[tuple[ImageResult, Claim]] = WriterPool(writer_count(config.writers))
    stop = threading.Event()
    check = _StopCheck(stop)
    idle = list(range(n))
    running: dict[Future[tuple[ImageResult, Encoded | None]], tuple[int, int, PlannedOutput, Claim]] = {}
    ready: dict[int, tuple[PlannedOutput, Claim, ImageResult, Encoded | None]] = {}
    taken = delivered = 0
    upcoming: tuple[PlannedOutput, Claim] | None = first
    exhausted = halted = False
    try:
        while True:
            while idle and not (exhausted or halted):
                job = upcoming if upcoming is not None else work.take()
                upcoming = None
                if job is None:
                    exhausted = True
                    break
                planned, claim = job
                device = idle.pop(0)
                events.image_started(taken, planned)
                read = reader.submit(read_input, planned, config)
                future = computers.submit(compute, planned, read, config, pipelines[device], check)  # type: ignore[arg-type]
                running[future] = (taken, device, planned, claim)
                taken += 1
            if not running:
                break
            finished, _ = wait_futures(running, return_when=FIRST_COMPLETED)
            for future in finished:
                seq, device, planned, claim = running.pop(future)
                idle.append(device)
                try:
                    result, encoded = future.result()
                except _Cancelled:
                    work.claims.release(claim)
                    continue
                result.stats["device"] = {"name": config.devices[device], "index": device}
                ready[seq] = (planned, claim, result, encoded)
            while delivered in ready and not halted:
                if not deliver(*ready.pop(delivered), work, writers, config, summary):
                    halted = True  # fail_fast: the images still computing are dropped
                    stop.set()
                delivered += 1
        for (result, claim), future in writers.drain():
            finish_write(result, claim, future, work.claims, events, summary)
    except KeyboardInterrupt:
        summary.interrupted = True
        stop.set()
        for (result, claim), future in writers.drain():  # let the writes in flight land atomically, then stop
            finish_write(result, claim, future, work.claims, events, summary)
    finally:
        stop.set()
        wait_futures(running)
        for _, _, _, claim in running.values():
            work.claims.release(claim)
        for _, claim, _, _ in ready.values():
            work.claims.release(claim)
        reader.shutdown(wait=True, cancel_futures=True)
        computers.shutdown(wait=True)
        writers.shutdown()
