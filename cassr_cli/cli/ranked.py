"""``cassr upscale`` as one rank of ``torchrun`` / ``accelerate launch``: the same batch on every rank, one
stdout, one summary, the worst exit code everywhere (see ``scaleout/ranks.py``).

Rank 0 writes stdout and stderr for the whole job: the merged records, failure lines, its progress bars,
each rank's error once and the summary. The other ranks print nothing (unless rank 0 cannot be reached).
The first Ctrl-C (or SIGTERM) interrupts a rank as usual; repeats are ignored while it finishes its write
and reports, because launchers pass the signal on again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from cassr_cli.cli import ui
from cassr_cli.cli.batch_view import BatchView
from cassr_cli.errors import EXIT_INTERRUPTED, CassrError, UsageError
from cassr_cli.runner import BatchSummary, ImageResult
from cassr_cli.scaleout.ranks import RankInfo, RankLink, RankOutcome, RecordMerger, rank_device

if TYPE_CHECKING:
    from cassr_cli.cli.upscale import UpscaleJob
    from cassr_cli.config import UpscaleConfig
    from cassr_cli.io.naming import PlannedOutput


def run_ranked(info: RankInfo, state: ui.InvocationState, job: UpscaleJob) -> int:
    """Run this rank's part of ``job``; returns the exit code of the whole job."""
    with _interrupt_once() as arm:
        link = RankLink.connect(info)  # imports torch: an interrupt waits until it is done
        if info.rank == 0:
            return _lead(info, state, job, link, arm)
        return _follow(info, state, job, link, arm)


def _prepare(info: RankInfo, job: UpscaleJob, link: RankLink) -> tuple[float, list[str] | None]:
    """What rank 0 decides for all, in a fixed order: the run's start time and the stdin list."""
    from cassr_cli.cli.upscale import _stdin_lines

    started = float(link.shared("start", lambda: repr(time.time())))
    stdin = None
    if "-" in job.sources:
        stdin = json.loads(link.shared("stdin", lambda: json.dumps(_stdin_lines(job.null))))
    return started, stdin


def _rank_config(config: UpscaleConfig, info: RankInfo) -> UpscaleConfig:
    if config.ray is not None:
        raise UsageError("--ray cannot be used under torchrun or accelerate launch", hint="use one or the other")
    return config.replace(device=rank_device(config.device, info.local_rank))


def _lead(info: RankInfo, state: ui.InvocationState, job: UpscaleJob, link: RankLink, arm: Callable[[], None]) -> int:
    view = BatchView(state, as_json=job.as_json, show_progress=job.progress and ui.is_interactive(state), print0=job.print0)
    events = _MergedEvents(view, RecordMerger(info.world_size))
    own: RankOutcome
    notes: list[str] = []
    with view:
        link.start_receiving(events.remote)
        try:
            arm()
            started, stdin = _prepare(info, job, link)
            config = _rank_config(job.resolve().config, info)
            plan = job.plan(state, config, stdin)
            notes = plan.notes
            summary = job.run(plan, config, events=events, started_at=started)
            own = RankOutcome(0, summary.exit_code, summary.interrupted)
        except CassrError as err:
            own = RankOutcome(0, err.exit_code, error=err.message, hint=err.hint)
        except KeyboardInterrupt:
            own = RankOutcome(0, EXIT_INTERRUPTED, interrupted=True)
        others = _uninterrupted(link.wait_for_ranks)
        events.flush()
    outcomes = [own, *others]
    shown: set[str] = set()
    for outcome in outcomes:
        if outcome.error and outcome.error not in shown:
            shown.add(outcome.error)
            prefix = "" if outcome.rank == 0 else f"rank {outcome.rank}: "
            ui.error(state, prefix + outcome.error, outcome.hint)
    interrupted = any(o.interrupted for o in outcomes)
    if events.merger.results or not shown:
        view.print_summary(BatchSummary(results=events.merger.results, notes=notes, interrupted=interrupted))
    code = max(o.code for o in outcomes)
    link.publish_final(code)
    return code


def _follow(info: RankInfo, state: ui.InvocationState, job: UpscaleJob, link: RankLink, arm: Callable[[], None]) -> int:
    state.quiet = True  # rank 0 speaks for everyone
    link.start_sending()
    outcome: RankOutcome
    try:
        arm()
        started, stdin = _prepare(info, job, link)
        config = _rank_config(job.resolve().config, info)
        plan = job.plan(state, config, stdin)
        summary = job.run(plan, config, events=_ForwardedEvents(link), started_at=started)
        outcome = RankOutcome(info.rank, summary.exit_code, summary.interrupted)
    except CassrError as err:
        outcome = RankOutcome(info.rank, err.exit_code, error=err.message, hint=err.hint)
    except KeyboardInterrupt:
        outcome = RankOutcome(info.rank, EXIT_INTERRUPTED, interrupted=True)
    code, reached = _uninterrupted(lambda: link.finish(outcome))
    if not reached and outcome.error:
        ui.error(state, f"rank {info.rank}: {outcome.error}", outcome.hint)
    return code


class _MergedEvents:
    """Rank 0's events: its own runner's and the other ranks' records, merged to one per input, shown
    through one view (calls come from the main thread and the receiving thread, hence the lock)."""

    def __init__(self, view: BatchView, merger: RecordMerger) -> None:
        self.view = view
        self.merger = merger
        self.lock = threading.Lock()

    def batch_started(self, total: int) -> None:
        with self.lock:
            self.view.batch_started(total)

    def image_started(self, index: int, planned: PlannedOutput) -> None:
        with self.lock:
            self.view.image_started(index, planned)

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        with self.lock:
            self.view.stage_progress(stage, done, total)

    def image_finished(self, result: ImageResult) -> None:
        with self.lock:
            merged = self.merger.add(result)
            if merged is not None:
                self.view.image_finished(merged)

    def remote(self, record: dict[str, Any]) -> None:
        self.image_finished(ImageResult.from_json(record))

    def flush(self) -> None:
        with self.lock:
            for merged in self.merger.flush():
                self.view.image_finished(merged)


class _ForwardedEvents:
    """A non-zero rank's events: each result record goes to rank 0; nothing is shown here."""

    def __init__(self, link: RankLink) -> None:
        self.link = link

    def batch_started(self, total: int) -> None:
        pass

    def image_started(self, index: int, planned: PlannedOutput) -> None:
        pass

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        pass

    def image_finished(self, result: ImageResult) -> None:
        self.link.send(result.to_json())


def _uninterrupted(wait: Any) -> Any:
    """``wait()``, resumed when a Ctrl-C arrives during it: the other ranks are finishing too."""
    while True:
        try:
            return wait()
        except KeyboardInterrupt:
            continue


@contextlib.contextmanager
def _interrupt_once() -> Iterator[Callable[[], None]]:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt; later ones are ignored, so a signal the
    launcher passes on again cannot cut a rank's cleanup short. Until the returned ``arm()`` is called
    a signal is only noted (an interrupted ``import torch`` leaves the process unable to report), and
    ``arm()`` raises it."""
    received: list[int] = []
    armed: list[bool] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1 and armed:
            raise KeyboardInterrupt

    def arm() -> None:
        armed.append(True)
        if received:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield arm
    finally:
        # The job is over and this process is about to exit with the merged code: a late Ctrl-C, or the
        # SIGTERM a launcher sends to the ranks still running once the first one has exited, must not
        # change that code. (Handlers someone else installed are given back.)
        for sig, old in previous.items():
            default = old in (signal.SIG_DFL, signal.default_int_handler)
            signal.signal(sig, signal.SIG_IGN if default else old)
