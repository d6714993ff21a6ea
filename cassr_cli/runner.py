"""Batch orchestration: discover → plan outputs → (read → pipeline → write) per image.

The per-image error policy lives here: a bad image becomes a ``failed`` result and the batch goes on
(unless ``fail_fast``); problems with the environment (weights, device) stop the batch. Reading the next
image and encoding/writing the previous ones run on helper threads (several writers,
``io/writer_pool.py``), overlapping the model work. The runner reports through a :class:`BatchEvents`
object and never prints.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cassr_cli.config import UpscaleConfig
from cassr_cli.errors import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    DeviceUnavailableError,
    EnvironmentNotReadyError,
    ImageError,
    UsageError,
)
from cassr_cli.io.claims import IN_PROGRESS_ELSEWHERE, Claim, Claims, sweep
from cassr_cli.io.discover import discover
from cassr_cli.io.naming import PlannedOutput, drop_previous_outputs, plan_outputs
from cassr_cli.io.writer_pool import WriterPool, writer_count

if TYPE_CHECKING:
    import numpy as np

    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.io.image import DecodedImage

logger = logging.getLogger(__name__)

Status = Literal["ok", "skipped", "failed"]


@dataclass
class ImageResult:
    """The outcome for one input (one ``--json`` line)."""

    input: str
    output: str | None
    status: Status
    seconds: float = 0.0
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object. A path that is not valid UTF-8 (Linux allows any bytes but ``/`` and
        NUL) is shown with U+FFFD in ``input``/``output``, and its exact bytes are added base64-encoded
        as ``input_bytes``/``output_bytes``."""
        fields: dict[str, Any] = {}
        for key, path in (("input", self.input), ("output", self.output)):
            fields[key] = path
            raw = os.fsencode(path) if path is not None else b""
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                fields[key] = raw.decode("utf-8", "replace")
                fields[f"{key}_bytes"] = base64.b64encode(raw).decode("ascii")
        error = self.error.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if self.error else None
        extra = {"status": self.status, "seconds": round(self.seconds, 4), "error": error, "stats": self.stats}
        return {**fields, **extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageResult:
        """The result of a ``--json`` record (another process's, e.g. a torchrun rank or a Ray worker);
        exact path bytes (``input_bytes``/``output_bytes``) win over the displayed text."""

        def path(key: str) -> str | None:
            if f"{key}_bytes" in data:
                return os.fsdecode(base64.b64decode(data[f"{key}_bytes"]))
            return None if data[key] is None else str(data[key])

        return cls(
            input=path("input") or "",
            output=path("output"),
            status=data["status"],
            seconds=float(data["seconds"]),
            error=data["error"],
            stats=dict(data["stats"]),
        )


@dataclass
class BatchPlan:
    """What a batch will do, decided before any image is read."""

    outputs: list[PlannedOutput]
    notes: list[str]
    dest: Path


@dataclass
class BatchSummary:
    """All results of a batch, in processing order."""

    results: list[ImageResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 all done (skips included), 1 some failed, 130 interrupted."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.failures else EXIT_OK


class BatchEvents(Protocol):
    """How the runner reports progress (the CLI renders it; tests record it)."""

    def batch_started(self, total: int) -> None: ...

    def image_started(self, index: int, planned: PlannedOutput) -> None: ...

    def stage_progress(self, stage: str, done: int, total: int) -> None: ...

    def image_finished(self, result: ImageResult) -> None: ...


class NullEvents:
    """Events that go nowhere (the Python API's default)."""

    def batch_started(self, total: int) -> None:
        pass

    def image_started(self, index: int, planned: PlannedOutput) -> None:
        pass

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        pass

    def image_finished(self, result: ImageResult) -> None:
        pass


PipelineFactory = Callable[[UpscaleConfig], "CassrPipeline"]


def plan_batch(
    sources: Sequence[str],
    dest: Path,
    config: UpscaleConfig,
    *,
    stdin_lines: Iterable[str] | None = None,
    stdin_exact: bool = False,
) -> BatchPlan:
    """Discover the inputs and assign outputs. Raises usage errors (exit 2) before any work starts.
    ``stdin_exact``: ``stdin_lines`` are exact paths (``-0``), not lines to trim."""
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"DEST must be a folder, but {dest} is a file")
    found = discover(
        sources, recursive=config.recursive, stdin_lines=stdin_lines, exclude=dest, stdin_exact=stdin_exact
    )
    notes = list(found.notes)
    items, previous = drop_previous_outputs(found.items, dest, suffix=config.suffix, fmt=config.format)
    if previous:
        notes.append(f"skipped {len(previous)} file(s) that are outputs of other inputs (earlier results)")
    outputs = plan_outputs(items, dest, suffix=config.suffix, fmt=config.format)
    if not outputs:
        notes.append("no images found in the given sources")
    elif config.shard is not None:  # after naming: output names depend on the whole batch
        from cassr_cli.config import parse_shard
        from cassr_cli.scaleout.shards import select_shard

        index, count = parse_shard(config.shard) or (1, 1)
        outputs, note = select_shard(outputs, index, count)
        notes.append(note)
    return BatchPlan(outputs=outputs, notes=notes, dest=dest)


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(out_h, out_w)`` for an input and a scale: rounded to whole pixels, at least 1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def upscale_files(
    sources: Sequence[str],
    dest: Path | str,
    config: UpscaleConfig | None = None,
    *,
    stdin_lines: Iterable[str] | None = None,
    events: BatchEvents | None = None,
    pipeline_factory: PipelineFactory | None = None,
) -> BatchSummary:
    """Upscale every image ``sources`` name into ``dest`` — the Python form of ``cassr upscale``.

    Raises:
        UsageError: bad sources or outputs that would overwrite inputs (nothing was processed).
        EnvironmentNotReadyError: weights missing/corrupt or device unavailable (exit 3).
    """
    config = config or UpscaleConfig()
    plan = plan_batch(sources, Path(dest), config, stdin_lines=stdin_lines)
    return run_batch(plan, config, events=events, pipeline_factory=pipeline_factory)


def run_batch(
    plan: BatchPlan,
    config: UpscaleConfig,
    *,
    events: BatchEvents | None = None,
    pipeline_factory: PipelineFactory | None = None,
    started_at: float | None = None,
) -> BatchSummary:
    """Process a planned batch. Ctrl-C finishes the write in flight (atomically) and returns a summary
    with ``interrupted=True``; nothing half-written is ever left under an output name.

    With ``config.ray`` set, the batch runs on that Ray cluster (``scaleout/ray_pipeline.py``).

    Each output is claimed (``io/claims.py``) just before it is computed, so several processes on one
    DEST share the work: an output another live process holds is ``skipped`` as in progress elsewhere.
    With ``overwrite``, an output written after ``started_at`` (default: now; the processes of one run
    pass one shared time) was written by another process of this run and is skipped too.
    """
    if config.ray is not None:  # the Python API's way to a Ray cluster (the CLI calls it directly)
        from cassr_cli.scaleout.ray_pipeline import run_batch_on_ray

        return run_batch_on_ray(plan, config, events=events, pipeline_factory=pipeline_factory)
    events = events or NullEvents()
    summary = BatchSummary(notes=list(plan.notes))
    started_at = time.time() if started_at is None else started_at
    todo: list[PlannedOutput] = []
    for planned in plan.outputs:
        if planned.output.exists() and not config.overwrite:
            summary.results.append(
                ImageResult(str(planned.item.path), str(planned.output), "skipped", error="output exists")
            )
        else:
            todo.append(planned)
    events.batch_started(len(plan.outputs))
    for result in summary.results:
        events.image_finished(result)
    if not todo:
        return summary
    with Claims() as claims:
        sweep(sorted({p.output.parent for p in todo}), claims)
        work = _Work(todo, config, claims, started_at, events, summary)
        factory = pipeline_factory or _default_pipeline_factory
        configs = device_configs(config, len(todo))
        # Load the models only when some image is left for this process, and before the first claim
        # (which creates DEST): missing weights fail (exit 3) before anything is read or created.
        pipelines = [factory(c) for c in configs] if work.peek() is not None else None
        first = work.take()
        if first is not None:
            pipelines = pipelines or [factory(c) for c in configs]
            if len(pipelines) > 1:
                _process_on_devices(work, first, config, pipelines, events, summary)
            else:
                _process_all(work, first, config, pipelines[0], events, summary)
    return summary


def device_configs(config: UpscaleConfig, images: int) -> list[UpscaleConfig]:
    """The pipelines a batch of ``images`` runs on, as configs: with a device list and several images, one
    pipeline per device (each on one device); otherwise one pipeline (with a list, that one image spreads
    its diffusion tiles over the devices)."""
    devices = config.devices
    if len(devices) > 1 and images > 1:
        return [config.replace(device=name) for name in devices]
    return [config]


class _Work:
    """The images still to do, in plan order, each claimed just before it is computed (so fast processes
    take more); images that are done or claimed elsewhere are reported as skipped on the way."""

    def __init__(
        self,
        todo: Sequence[PlannedOutput],
        config: UpscaleConfig,
        claims: Claims,
        started_at: float,
        events: BatchEvents,
        summary: BatchSummary,
    ) -> None:
        self.todo = todo
        self.config = config
        self.claims = claims
        self.started_at = started_at
        self.events = events
        self.summary = summary
        self.position = 0

    def take(self) -> tuple[PlannedOutput, Claim] | None:
        """The next image to compute, claimed; None when nothing is left for this process."""
        while self.position < len(self.todo):
            planned = self.todo[self.position]
            self.position += 1
            reason = self._done(planned)
            try:
                claim = None if reason else self.claims.acquire(planned.output)
            except OSError as err:  # DEST not writable or full: this image fails, the batch goes on
                self.fail(planned, f"cannot claim {planned.output}: {err.strerror or err} "
                          "(check that the output folder is writable and has free space)")  # fmt: skip
                continue
            if claim is not None:
                reason = self._done(planned)  # finished by another process just before the claim
                if reason is None:
                    return planned, claim
                self.claims.release(claim)
            self.skip(planned, reason or IN_PROGRESS_ELSEWHERE)
        return None

    def peek(self) -> PlannedOutput | None:
        """The image :meth:`take` will most likely return next (to read it ahead), claiming nothing."""
        for planned in self.todo[self.position :]:
            if self._done(planned) is None and self.claims.is_free(planned.output):
                return planned
        return None

    def _done(self, planned: PlannedOutput) -> str | None:
        """Why ``planned`` needs no work any more, or None."""
        try:
            modified = planned.output.stat().st_mtime
        except OSError:
            return None
        if not self.config.overwrite:
            return "output exists"
        if modified >= self.started_at:
            return "written by another process of this run"
        return None

    def skip(self, planned: PlannedOutput, reason: str) -> None:
        result = ImageResult(str(planned.item.path), str(planned.output), "skipped", error=reason)
        self.summary.results.append(result)
        self.events.image_finished(result)

    def fail(self, planned: PlannedOutput, error: str) -> None:
        result = ImageResult(str(planned.item.path), None, "failed", error=error)
        self.summary.results.append(result)
        self.events.image_finished(result)


def _default_pipeline_factory(config: UpscaleConfig) -> CassrPipeline:
    from cassr_cli.engine.pipeline import CassrPipeline

    return CassrPipeline.from_config(config)


def _process_all(
    work: _Work,
    first: tuple[PlannedOutput, Claim],
    config: UpscaleConfig,
    pipeline: CassrPipeline,
    events: BatchEvents,
    summary: BatchSummary,
) -> None:
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cassr-read")
    writers: WriterPool[tuple[ImageResult, Claim]] = WriterPool(writer_count(config.writers))
    current: tuple[PlannedOutput, Claim] | None = first
    ahead: tuple[PlannedOutput, Future[tuple[DecodedImage, float]]] | None = None
    index = 0

    def finish(due: Iterable[tuple[tuple[ImageResult, Claim], Future[float]]]) -> None:
        for (result, claim), future in due:  # oldest first: results are recorded in processing order
            _finish_write(result, claim, future, work.claims, events, summary)

    try:
        while current is not None:
            planned, claim = current
            if ahead is not None and ahead[0] is planned:
                current_read = ahead[1]
            else:  # nothing read ahead, or another process took the image read ahead
                current_read = reader.submit(_read, planned, config)
            upcoming = work.peek()
            ahead = (upcoming, reader.submit(_read, upcoming, config)) if upcoming is not None else None
            events.image_started(index, planned)
            index += 1
            result, encoded = _compute(planned, current_read, config, pipeline, events)
            if not _deliver(planned, claim, result, encoded, work, writers, config, summary):
                break
            current = work.take()
        finish(writers.drain())
    except KeyboardInterrupt:
        summary.interrupted = True
        finish(writers.drain())  # let the writes in flight land atomically, then stop
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writers.shutdown()


def _deliver(
    planned: PlannedOutput,
    claim: Claim,
    result: ImageResult,
    encoded: Encoded | None,
    work: _Work,
    writers: WriterPool[tuple[ImageResult, Claim]],
    config: UpscaleConfig,
    summary: BatchSummary,
) -> bool:
    """Hand a computed image to the writers (or record its failure); False when the batch must stop
    (``fail_fast`` after a failure). Records come out in the order images are delivered."""

    def finish(due: Iterable[tuple[tuple[ImageResult, Claim], Future[float]]]) -> None:
        for (done, held), future in due:  # oldest first: results are recorded in processing order
            _finish_write(done, held, future, work.claims, work.events, summary)

    if encoded is not None:  # earlier writes overlapped this image's compute; at most `writers` stay open
        if config.fail_fast:  # one write at a time, so a failed one stops the batch before the next
            finish(writers.drain())
            if summary.failures:  # that write failed: write nothing more
                work.claims.release(claim)
                return False
        write = functools.partial(_encode_and_write, planned, *encoded, claim=claim, claims=work.claims)
        finish(writers.submit((result, claim), write))
    else:
        finish(writers.drain())
        work.claims.release(claim)
        summary.results.append(result)
        work.events.image_finished(result)
    return not (config.fail_fast and summary.failures)


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


def _process_on_devices(
    work: _Work,
    first: tuple[PlannedOutput, Claim],
    config: UpscaleConfig,
    pipelines: Sequence[CassrPipeline],
    events: BatchEvents,
    summary: BatchSummary,
) -> None:
    """Several images on several devices: one pipeline per device, each on its own thread, each taking
    the next image when it is free (claimed just then, as in :func:`_process_all`). Writes, records and
    their order are :func:`_process_all`'s: computed images are delivered in the order they were taken."""
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
                read = reader.submit(_read, planned, config)
                future = computers.submit(_compute, planned, read, config, pipelines[device], check)  # type: ignore[arg-type]
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
                if not _deliver(*ready.pop(delivered), work, writers, config, summary):
                    halted = True  # fail_fast: the images still computing are dropped
                    stop.set()
                delivered += 1
        for (result, claim), future in writers.drain():
            _finish_write(result, claim, future, work.claims, events, summary)
    except KeyboardInterrupt:
        summary.interrupted = True
        stop.set()
        for (result, claim), future in writers.drain():  # let the writes in flight land atomically, then stop
            _finish_write(result, claim, future, work.claims, events, summary)
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


def _read(planned: PlannedOutput, config: UpscaleConfig) -> tuple[DecodedImage, float]:
    from cassr_cli.io.image import read_image

    start = time.perf_counter()
    image = read_image(planned.item.path, max_pixels=config.max_pixels)
    return image, time.perf_counter() - start


Encoded = tuple["np.ndarray", "np.ndarray | None", "DecodedImage", UpscaleConfig]


def _compute(
    planned: PlannedOutput,
    read: Future[tuple[DecodedImage, float]],
    config: UpscaleConfig,
    pipeline: CassrPipeline,
    events: BatchEvents,
) -> tuple[ImageResult, Encoded | None]:
    """Run the pipeline on one image. Per-image problems become a failed result; environment problems
    propagate and stop the batch."""
    start = time.perf_counter()
    result = ImageResult(str(planned.item.path), str(planned.output), "ok")
    try:
        decoded, read_seconds = read.result()
        key = str(planned.item.relative)
        rgb, alpha, stats = upscale_decoded(decoded, key, config, pipeline, progress=events.stage_progress)
        stats["read"] = {"seconds": read_seconds}
        result.stats = stats
        result.seconds = time.perf_counter() - start
        return result, (rgb, alpha, decoded, config)
    except (EnvironmentNotReadyError, KeyboardInterrupt):
        raise
    except Exception as err:  # per-image policy: record, log, go on — unless the GPU itself broke
        _stop_on_device_failure(err)
        result.status = "failed"
        result.output = None
        result.error = _describe(err, planned.item.path)
        result.seconds = time.perf_counter() - start
        logger.debug("failure on %s", planned.item.path, exc_info=True)
        return result, None


def upscale_decoded(
    decoded: DecodedImage,
    key: str,
    config: UpscaleConfig,
    pipeline: CassrPipeline,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One image through the pipeline, as every ``cassr upscale`` image goes (the Python API too).

    Args:
        decoded: the input (:func:`cassr_cli.io.image.read_image` or ``decode_pil``).
        key: the relative output path the per-image seed derives from (the file name for a single file).
        progress: told ``(stage, done, total)`` as tiles finish.

    Returns:
        ``rgb`` float32 ``[H', W', 3]`` in ``[0, 1]``, ``alpha`` float32 ``[H', W']`` (resized) or None, and
        the pipeline's stats; ``H', W'`` = :func:`output_size`.
    """
    import torch

    from cassr_cli.io.alpha import fill_transparent_colors, is_fully_opaque, resize_alpha
    from cassr_cli.runtime.memory import check_host_memory
    from cassr_cli.runtime.seeding import image_seed

    out_h, out_w = output_size(decoded.height, decoded.width, config.scale)
    native = pipeline.activation.scale
    check_host_memory(
        out_h,
        out_w,
        native_pixels=decoded.height * decoded.width * native * native,
        diffusion=pipeline.diffusion is not None,
        max_host_memory_gb=config.max_host_memory_gb,
    )
    rgb = decoded.rgb
    if decoded.alpha is not None and not is_fully_opaque(decoded.alpha):
        rgb = fill_transparent_colors(rgb, decoded.alpha)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()
    generator = torch.Generator("cpu").manual_seed(image_seed(config.seed, key))
    result = pipeline(tensor, out_size=(out_h, out_w), generator=generator, progress=progress)
    out_rgb = result.image[0].permute(1, 2, 0).contiguous().numpy()
    out_alpha = None
    if decoded.alpha is not None:
        out_alpha = resize_alpha(decoded.alpha, out_h, out_w)
    return out_rgb, out_alpha, dict(result.stats)


class ClaimLostError(Exception):
    """The output's claim was taken over by another process (its lease ran out): not written here."""


def _encode_and_write(
    planned: PlannedOutput,
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    decoded: DecodedImage,
    config: UpscaleConfig,
    *,
    claim: Claim | None = None,
    claims: Claims | None = None,
) -> float:
    """Encode and write one output atomically; with a claim, only while the claim is still held."""
    from cassr_cli.io.image import encode_image, write_atomic

    start = time.perf_counter()
    data = encode_image(
        rgb,
        alpha,
        fmt=planned.fmt,
        bit_depth=decoded.bit_depth,
        is_gray=decoded.is_gray,
        quality=config.quality,
        icc_profile=decoded.icc_profile,
        exif=decoded.exif,
    )
    if claim is not None and claims is not None and not claims.holds(claim):
        raise ClaimLostError
    write_atomic(planned.output, data)
    return time.perf_counter() - start


def _finish_write(
    result: ImageResult,
    claim: Claim,
    future: Future[float],
    claims: Claims,
    events: BatchEvents,
    summary: BatchSummary,
) -> None:
    try:
        seconds = future.result()
        result.stats["write"] = {"seconds": seconds}
        result.seconds += seconds
    except ClaimLostError:
        result.status = "skipped"
        result.error = IN_PROGRESS_ELSEWHERE
    except Exception as err:
        result.status = "failed"
        result.output = None
        result.error = _describe(err, Path(result.input))
        logger.debug("write failure", exc_info=True)
    finally:
        claims.release(claim)
    result.stats["host_peak_rss_bytes"] = _peak_rss_bytes()
    summary.results.append(result)
    events.image_finished(result)


def _stop_on_device_failure(err: BaseException) -> None:
    """A GPU failure other than out-of-memory leaves the CUDA context unusable: stop the batch (exit 3)
    instead of failing every remaining image the same way."""
    if "torch" not in sys.modules:
        return
    from cassr_cli.runtime.device import is_device_failure

    if is_device_failure(err):
        raise DeviceUnavailableError(
            f"the GPU failed and cannot continue: {err}",
            hint="rerun the command (finished images are kept and skipped); check `cassr doctor` and the driver",
        ) from err


def _describe(err: BaseException, path: Path | None = None) -> str:
    """The ``error`` text of a failed result. The failure line and ``--json`` already name the input, so
    a leading ``"{path}: "`` (how the image reader words its errors) is dropped."""
    if isinstance(err, ImageError):
        message = err.message
        if path is not None:
            message = message.removeprefix(f"{path}: ")
        return f"{message} ({err.hint})" if err.hint else message
    if isinstance(err, MemoryError):
        return "out of host memory"
    return f"internal error: {type(err).__name__}: {err}"


def _peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (None where the platform cannot tell, e.g. Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
