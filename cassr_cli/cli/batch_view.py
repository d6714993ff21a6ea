"""What a batch looks like to the user: stdout lines, failure lines, progress bars and the summary.

Implements the runner's ``BatchEvents``. stdout gets data only and is flushed per line, so
``cassr upscale … | xargs …`` streams; everything else goes to the stderr console. Output paths are
written as the file system's bytes (any name survives, UTF-8 or not). With newline-separated output, a
path that contains a line break is not printed (it would read as two paths): a warning names it and
points at ``--print0`` and ``--json``.
"""

from __future__ import annotations

import json
import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cassr_cli.cli import ui

if TYPE_CHECKING:
    from cassr_cli.io.naming import PlannedOutput
    from cassr_cli.runner import BatchSummary, ImageResult

STAGE_LABELS = {
    "activation": "activation",
    "activation-decode": "decoding (activation)",
    "encode": "encoding",
    "guidance": "guidance",
    "denoise": "denoising",
    "decode": "decoding",
}


SKIP_HINTS = {
    "output exists": " (use --overwrite to redo them)",
    "in progress elsewhere": " (another cassr process holds them; rerun later to pick up what it leaves)",
}


def _skip_reasons(summary: BatchSummary) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for result in summary.results:
        if result.status == "skipped":
            reasons[result.error or "skipped"] = reasons.get(result.error or "skipped", 0) + 1
    return reasons


class BatchView:
    """Renders one batch. Use as a context manager around ``run_batch``.

    Args:
        state: the invocation's output settings (console, quiet, verbosity).
        as_json: stdout gets one JSON object per image instead of output paths.
        show_progress: draw Rich progress bars (only when stderr is a terminal).
        print0: end each output path with a NUL byte instead of a newline.
    """

    def __init__(
        self, state: ui.InvocationState, *, as_json: bool, show_progress: bool, print0: bool = False
    ) -> None:
        self.state = state
        self.as_json = as_json
        self.print0 = print0
        self.stdout = sys.stdout
        self._stdout_closed = False
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._current: TaskID | None = None
        if show_progress:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=state.console(),
                transient=True,
            )

    def __enter__(self) -> BatchView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    # --- BatchEvents ----------------------------------------------------------------------------------
    def batch_started(self, total: int) -> None:
        if self._progress is not None:
            self._overall = self._progress.add_task("images", total=total)

    def image_started(self, index: int, planned: PlannedOutput) -> None:
        if self._progress is None:
            return
        name = planned.item.relative.name
        if self._current is not None:
            self._progress.remove_task(self._current)
        self._current = self._progress.add_task(f"  {escape(name)}", total=None)

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        if self._progress is None or self._current is None:
            return
        label = STAGE_LABELS.get(stage, stage)
        self._progress.update(self._current, completed=done, total=total, description=f"  {label}")

    def image_finished(self, result: ImageResult) -> None:
        if self.as_json:  # to_json holds valid Unicode only (raw bytes of odd names go base64)
            self._emit(json.dumps(result.to_json(), ensure_ascii=False).encode("utf-8") + b"\n")
        elif result.status == "ok" and result.output:
            raw = os.fsencode(result.output)
            if self.print0:
                self._emit(raw + b"\0")
            elif b"\n" in raw or b"\r" in raw:
                ui.warn(
                    self.state,
                    f"{result.output!r} was written, but its path holds a line break, so it is not printed "
                    "on stdout (use --print0 or --json to get every path)",
                )
            else:
                self._emit(raw + b"\n")
        if result.status == "failed" and not self.state.quiet:  # -q: the summary lists failures
            self.state.console().print(f"[red]failed:[/] {escape(result.input)}: {escape(result.error or '')}")
        elif result.status == "skipped" and self.state.verbosity >= 1:
            self.state.console().print(f"[dim]skipped:[/] {escape(result.input)} ({escape(result.error or '')})")
        if self._progress is not None and self._overall is not None:
            self._progress.advance(self._overall)

    # --- summary ------------------------------------------------------------------------------------
    def print_summary(self, summary: BatchSummary) -> None:
        """The final stderr summary: counts, then each failure with its reason (also under ``-q``)."""
        done, skipped, failed = summary.count("ok"), summary.count("skipped"), summary.count("failed")
        console = self.state.console()
        parts = [f"{done} done", f"{skipped} skipped", f"{failed} failed"]
        head = "[bold yellow]interrupted:[/] " if summary.interrupted else ""
        colour = "red" if failed else "green"
        console.print(f"{head}[{colour}]{' · '.join(parts)}[/]")
        if skipped and not self.state.quiet and self.state.verbosity == 0:
            for reason, count in _skip_reasons(summary).items():
                hint = SKIP_HINTS.get(reason, "")
                console.print(f"[dim]skipped {count}: {escape(reason)}{hint}[/]")
        for result in summary.failures:
            console.print(f"  [red]✗[/] {escape(result.input)}: {escape(result.error or '')}")

    def _emit(self, data: bytes) -> None:
        if self._stdout_closed:
            return
        try:
            buffer = getattr(self.stdout, "buffer", None)
            if buffer is None:  # a text-only stream (embedding): the same bytes, decoded back
                self.stdout.write(os.fsdecode(data))
                self.stdout.flush()
            else:
                self.stdout.flush()
                buffer.write(data)
                buffer.flush()
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): keep processing the batch, stop writing to stdout.
            self._stdout_closed = True
