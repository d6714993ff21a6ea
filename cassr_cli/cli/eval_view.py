"""What an evaluation looks like to the user: one progress bar over the whole evaluation, the summary
table, unavailable metrics, failures, and ``--json`` lines on stdout.

Implements ``cassr_cli.evaluation.session.EvalEvents``. stdout gets the JSON records only (flushed per
line); everything else goes to the stderr console.
"""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

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
from rich.table import Table

from cassr_cli.cli import ui
from cassr_cli.cli.batch_view import STAGE_LABELS

if TYPE_CHECKING:
    from cassr_cli.evaluation.metrics.specs import Unavailable
    from cassr_cli.evaluation.results import EvalResults
    from cassr_cli.io.naming import PlannedOutput
    from cassr_cli.runner import ImageResult

BEST_MARK = "*"


class EvalView:
    """Renders one evaluation; use as a context manager around ``run_evaluation``."""

    def __init__(self, state: ui.InvocationState, *, as_json: bool, show_progress: bool) -> None:
        self.state = state
        self.as_json = as_json
        self.stdout = sys.stdout
        self._stdout_closed = False
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._current: TaskID | None = None
        self._phase = "evaluating"
        self._shown_notes: set[str] = set()
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

    def __enter__(self) -> EvalView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    # --- EvalEvents -----------------------------------------------------------------------------------
    def note(self, message: str) -> None:
        self._shown_notes.add(message)
        ui.note(self.state, message)

    def metric_unavailable(self, problem: Unavailable) -> None:
        if self.state.quiet:
            return
        console = self.state.console()
        console.print(f"[yellow]metric unavailable:[/] {escape(problem.key)}: {escape(problem.reason)}")
        console.print(f"  [dim]hint:[/] {escape(problem.hint)}")

    def started(self, total: int) -> None:
        if self._progress is not None:
            self._overall = self._progress.add_task("evaluation", total=total)

    def phase(self, text: str) -> None:
        self._phase = text
        if self._progress is not None and self._current is not None:  # the last image's stage bar is done
            self._progress.remove_task(self._current)
            self._current = None
        if self._progress is not None and self._overall is not None:
            self._progress.update(self._overall, description=escape(text))
        if self.state.verbosity >= 1 and not self.state.quiet:
            self.state.console().print(f"[dim]{escape(text)}[/]")

    def advance(self) -> None:
        if self._progress is not None and self._overall is not None:
            self._progress.advance(self._overall)

    def batch_events(self, variant: str) -> _VariantBatch:
        return _VariantBatch(self, variant)

    def record(self, record: dict[str, Any]) -> None:
        if self.as_json:
            self._emit(json.dumps(record, ensure_ascii=False, allow_nan=False))

    # --- the end --------------------------------------------------------------------------------------
    def print_report(self, results: EvalResults) -> None:
        """The summary table, failures, notes, and where the reports are (stderr)."""
        console = self.state.console()
        if results.interrupted:
            console.print("[bold yellow]interrupted:[/] no reports written; rerun to continue (finished outputs are kept)")
            return
        if not self.state.quiet:
            console.print(summary_table(results))
            for note in results.notes:
                if note not in self._shown_notes:
                    self.note(note)
        failures = results.failures()
        for variant, image, error in failures:
            where = f"{variant} / {image}" if variant else image
            console.print(f"  [red]✗[/] {escape(where)}: {escape(error)}")
        done = sum(1 for o in results.outcomes.values() if o.status != "failed")
        colour = "red" if failures else "green"
        console.print(
            f"[{colour}]{done} output(s) scored · {len(failures)} failed[/] · reports: "
            f"{escape(str(results.out / 'metrics.json'))}, metrics.csv, report.html, sheet.png"
        )

    def _emit(self, line: str) -> None:
        if self._stdout_closed:
            return
        try:
            self.stdout.write(line + "\n")
            self.stdout.flush()
        except BrokenPipeError:
            self._stdout_closed = True


class _VariantBatch:
    """The runner's events while one variant's outputs are made."""

    def __init__(self, view: EvalView, variant: str) -> None:
        self.view = view
        self.variant = variant

    def batch_started(self, total: int) -> None:
        pass

    def image_started(self, index: int, planned: PlannedOutput) -> None:
        progress = self.view._progress
        if progress is None:
            return
        if self.view._current is not None:
            progress.remove_task(self.view._current)
        self.view._current = progress.add_task(f"  {escape(self.variant)}: {escape(planned.item.relative.name)}", total=None)

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        progress = self.view._progress
        if progress is None or self.view._current is None:
            return
        label = STAGE_LABELS.get(stage, stage)
        progress.update(self.view._current, completed=done, total=total, description=f"  {escape(self.variant)}: {label}")

    def image_finished(self, result: ImageResult) -> None:
        state = self.view.state
        if result.status == "failed" and not state.quiet:
            state.console().print(f"[red]failed:[/] {escape(self.variant)} / {escape(result.input)}: {escape(result.error or '')}")
        elif result.status == "skipped" and state.verbosity >= 1:
            state.console().print(f"[dim]reused:[/] {escape(str(result.output))}")
        self.view.advance()


def summary_table(results: EvalResults) -> Table:
    """Variants × metric means and run stats; the best value of each column is bold and starred."""
    from cassr_cli.evaluation.metrics.specs import METRICS
    from cassr_cli.evaluation.results import SUMMARY_STATS, format_value, summary_rows

    keys = list(results.available)
    stats = [k for k, _ in SUMMARY_STATS]
    table = Table(title=f"cassr eval · {len(results.images)} image(s) · ×{results.info.get('scale')}", title_justify="left")
    table.add_column("variant", overflow="fold")
    for key in keys:
        table.add_column(f"{METRICS[key].label} {METRICS[key].arrow()}", justify="right", overflow="fold")
    for _key, title in SUMMARY_STATS:
        table.add_column(f"{title} ↓", justify="right", overflow="fold")
    for row in summary_rows(results):
        cells = [escape(row.variant)]
        for key in keys + stats:
            text = format_value(key, row.values.get(key))
            cells.append(f"[bold green]{text}{BEST_MARK}[/]" if key in row.best else text)
        table.add_row(*cells)
    reference = results.reference_mean()
    if reference:
        label = "HR" if results.info.get("mode") != "no-reference" else "input"
        table.add_row(f"[dim]({label})[/]", *[f"[dim]{format_value(k, reference.get(k))}[/]" if k in reference else "" for k in keys], *["" for _ in stats])
    table.caption = f"means over the images; {BEST_MARK} = best in column"
    table.caption_justify = "left"
    return table
