"""``cassr upscale SOURCES... DEST``: options → UpscaleConfig → runner, with stdout kept for data.

stdout: one written output path per line (``--print0``: each ended by a NUL byte), or with ``--json``
one JSON object per image (ok, skipped and failed alike). stderr: notes, one line per failed image,
progress bars (only on a terminal) and a final summary. ``-`` reads paths from stdin, one per line or
(``-0``) NUL-separated.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cassr_cli.cli import options, ui
from cassr_cli.cli.config_options import with_config_options
from cassr_cli.errors import UsageError

if TYPE_CHECKING:
    from cassr_cli.cli.batch_view import BatchView
    from cassr_cli.config import ResolvedConfig, UpscaleConfig
    from cassr_cli.runner import BatchEvents, BatchPlan, BatchSummary

EXAMPLES = """
Examples:

  cassr upscale photos/ out/ --scale 4

  cassr upscale 'shots/**/*.JPG' out/ --recursive --format png --suffix _x4

  find shots -name '*.jpg' | cassr upscale - out/ --steps 0

  find shots -name '*.jpg' -print0 | cassr upscale -0 - out/ --print0 | xargs -0 ls -l

  cassr upscale scan.tif out/ --json > results.jsonl
"""


def register(app: typer.Typer) -> None:
    """Add ``upscale`` to ``app``."""

    @app.command(epilog=EXAMPLES, no_args_is_help=True)
    @with_config_options
    def upscale(
        ctx: typer.Context,
        sources: Annotated[
            list[str],
            typer.Argument(help="Images, folders, globs, or '-' to read paths (one per line) from stdin.", show_default=False),
        ],
        dest: Annotated[Path, typer.Argument(help="Output folder (created if missing).", show_default=False)],
        # --- reporting ----------------------------------------------------------------------------
        config: options.ConfigFile = None,
        as_json: Annotated[bool, typer.Option("--json", help="stdout: one JSON object per image instead of output paths.", rich_help_panel="Reporting")] = False,
        null: Annotated[bool, typer.Option("-0", "--null", help="With '-': the paths on stdin are separated by NUL bytes (find -print0) and used exactly as given.", rich_help_panel="Reporting")] = False,
        print0: Annotated[bool, typer.Option("--print0", help="stdout: each output path ended by a NUL byte instead of a newline (xargs -0).", rich_help_panel="Reporting")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr (only shown on a terminal).", rich_help_panel="Reporting")] = True,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
        settings: dict[str, Any] | None = None,
    ) -> int:
        """Upscale images (files, folders, globs, or '-' for a list on stdin) into DEST."""
        from cassr_cli.scaleout.ranks import detect_ranks

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        if null and "-" not in sources:
            raise UsageError("-0/--null describes the list of paths on stdin: add '-' to the sources")
        if print0 and as_json:
            raise UsageError("--print0 and --json are two stdout formats: choose one")
        job = UpscaleJob(sources, dest, settings or {}, config, as_json=as_json, progress=progress, null=null, print0=print0)
        ranks = detect_ranks()
        if ranks is not None:  # one of several processes started by torchrun / accelerate launch
            from cassr_cli.cli.ranked import run_ranked

            return run_ranked(ranks, state, job)
        resolved = job.resolve()
        plan = job.plan(state, resolved.config, _stdin_lines(null) if "-" in sources else None)
        view = job.view(state, resolved.config)
        with view:
            summary = job.run(plan, resolved.config, events=view, show_progress=progress and ui.is_interactive(state))
        view.print_summary(summary)
        return summary.exit_code


@dataclass(frozen=True)
class UpscaleJob:
    """One ``cassr upscale`` invocation's arguments, and its steps: resolve the config, plan the batch
    (printing the plan's notes), make the view, run (here, or on Ray with ``--ray``)."""

    sources: list[str]
    dest: Path
    settings: dict[str, Any]
    config_file: Path | None
    as_json: bool = False
    progress: bool = True
    null: bool = False
    print0: bool = False

    def resolve(self) -> ResolvedConfig:
        from cassr_cli.config import resolve_config

        return resolve_config(self.settings, config_file=self.config_file)

    def plan(self, state: ui.InvocationState, config: UpscaleConfig, stdin_lines: list[str] | None) -> BatchPlan:
        from cassr_cli.runner import plan_batch

        plan = plan_batch(self.sources, self.dest, config, stdin_lines=stdin_lines, stdin_exact=self.null)
        for note in plan.notes:
            ui.note(state, note)
        return plan

    def view(self, state: ui.InvocationState, config: UpscaleConfig) -> BatchView:
        """stdout records, failure lines and the summary; cassr's progress bars unless Ray draws its own."""
        from cassr_cli.cli.batch_view import BatchView

        ray_draws = config.ray is not None and not config.ray.startswith("ray://")  # Ray Client: we draw
        show = self.progress and ui.is_interactive(state) and not ray_draws
        return BatchView(state, as_json=self.as_json, show_progress=show, print0=self.print0)

    def run(
        self,
        plan: BatchPlan,
        config: UpscaleConfig,
        *,
        events: BatchEvents,
        started_at: float | None = None,
        show_progress: bool = False,
    ) -> BatchSummary:
        if config.ray is not None:
            from cassr_cli.scaleout.ray_pipeline import run_batch_on_ray

            return run_batch_on_ray(plan, config, events=events, progress=show_progress)
        from cassr_cli.runner import run_batch

        return run_batch(plan, config, events=events, started_at=started_at)


def _stdin_lines(null: bool) -> list[str]:
    """The path list on stdin, read as bytes so that any file name survives (see ``split_stdin``)."""
    from cassr_cli.io.discover import split_stdin

    stream = sys.stdin
    if stream is None or stream.isatty():
        raise UsageError(
            "'-' reads image paths from standard input, but standard input is a terminal",
            hint="pipe a list in, e.g.: find shots -name '*.jpg' | cassr upscale - out/",
        )
    buffer = getattr(stream, "buffer", None)
    data = buffer.read() if buffer is not None else os.fsencode(stream.read())
    return split_stdin(data, null=null)
