"""Batch orchestration: discover → plan outputs → (read → pipeline → write) per image.

:func:`plan_batch` decides every output before any image is read; :func:`run_batch` skips what exists,
claims each output just before it is computed and runs the images on one pipeline (here) or on one
pipeline per device (``runner/devices.py``). Reading the next image and encoding/writing the previous
ones run on helper threads (several writers, ``io/writer_pool.py``), overlapping the model work. The
runner reports through a :class:`BatchEvents` object and never prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from cassr_cli.config import UpscaleConfig
from cassr_cli.errors import UsageError
from cassr_cli.io.claims import Claim, Claims, sweep
from cassr_cli.io.discover import discover
from cassr_cli.io.naming import PlannedOutput, drop_previous_outputs, plan_outputs
from cassr_cli.io.writer_pool import WriterPool, writer_count
from cassr_cli.runner.devices import device_configs, process_on_devices
from cassr_cli.runner.per_image import Work, compute, deliver, finish_write, read_input
from cassr_cli.runner.records import (
    BatchEvents,
    BatchPlan,
    BatchSummary,
    ImageResult,
    NullEvents,
    PipelineFactory,
    begin_batch,
)

if TYPE_CHECKING:
    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.io.image import DecodedImage


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
    started_at = time.time() if started_at is None else started_at
    summary, todo = begin_batch(plan, config, events)
    if not todo:
        return summary
    with Claims() as claims:
        sweep(sorted({p.output.parent for p in todo}), claims)
        work = Work(todo, config, claims, started_at, events, summary)
        factory = pipeline_factory or default_pipeline_factory
        configs = device_configs(config, len(todo))
        # Load the models only when some image is left for this process, and before the first claim
        # (which creates DEST): missing weights fail (exit 3) before anything is read or created.
        pipelines = [factory(c) for c in configs] if work.peek() is not None else None
        first = work.take()
        if first is not None:
            pipelines = pipelines or [factory(c) for c in configs]
            if len(pipelines) > 1:
                process_on_devices(work, first, config, pipelines, events, summary)
            else:
                _process_all(work, first, config, pipelines[0], events, summary)
    return summary


def default_pipeline_factory(config: UpscaleConfig) -> CassrPipeline:
    from cassr_cli.engine.pipeline import CassrPipeline

    return CassrPipeline.from_config(config)


def _process_all(
    work: Work,
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
            finish_write(result, claim, future, work.claims, events, summary)

    try:
        while current is not None:
            planned, claim = current
            if ahead is not None and ahead[0] is planned:
                current_read = ahead[1]
            else:  # nothing read ahead, or another process took the image read ahead
                current_read = reader.submit(read_input, planned, config)
            upcoming = work.peek()
            ahead = (upcoming, reader.submit(read_input, upcoming, config)) if upcoming is not None else None
            events.image_started(index, planned)
            index += 1
            result, encoded = compute(planned, current_read, config, pipeline, events)
            if not deliver(planned, claim, result, encoded, work, writers, config, summary):
                break
            current = work.take()
        finish(writers.drain())
    except KeyboardInterrupt:
        summary.interrupted = True
        finish(writers.drain())  # let the writes in flight land atomically, then stop
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writers.shutdown()
