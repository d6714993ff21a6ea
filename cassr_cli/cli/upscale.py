"""``cassr upscale SOURCES... DEST``: options → UpscaleConfig → runner, with stdout kept for data.

stdout: one written output path per line, or with ``--json`` one JSON object per image (ok, skipped
and failed alike). stderr: notes, one line per failed image, progress bars (only on a terminal) and a
final summary.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cassr_cli.cli import options, ui
from cassr_cli.cli.config_options import with_config_options
from cassr_cli.errors import UsageError

EXAMPLES = """
Examples:

  cassr upscale photos/ out/ --scale 4

  cassr upscale 'shots/**/*.JPG' out/ --recursive --format png --suffix _x4

  find shots -name '*.jpg' | cassr upscale - out/ --steps 0

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
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr (only shown on a terminal).", rich_help_panel="Reporting")] = True,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
        settings: dict[str, Any] | None = None,
    ) -> int:
        """Upscale images (files, folders, globs, or '-' for a list on stdin) into DEST."""
        from cassr_cli.cli.batch_view import BatchView
        from cassr_cli.config import resolve_config
        from cassr_cli.runner import plan_batch, run_batch

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        resolved = resolve_config(settings or {}, config_file=config)
        stdin_lines = _stdin_lines() if "-" in sources else None
        plan = plan_batch(sources, dest, resolved.config, stdin_lines=stdin_lines)
        for note in plan.notes:
            ui.note(state, note)
        view = BatchView(state, as_json=as_json, show_progress=progress and ui.is_interactive(state))
        with view:
            summary = run_batch(plan, resolved.config, events=view)
        view.print_summary(summary)
        return summary.exit_code


def _stdin_lines() -> list[str]:
    stream = sys.stdin
    if stream is None or stream.isatty():
        raise UsageError(
            "'-' reads image paths from standard input, but standard input is a terminal",
            hint="pipe a list in, e.g.: find shots -name '*.jpg' | cassr upscale - out/",
        )
    return stream.read().splitlines()
