"""Option aliases shared by several commands, so one flag means the same thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cassr_cli.cli import ui

Verbose = Annotated[
    int,
    typer.Option("--verbose", "-v", count=True, help="More detail on stderr (-v info, -vv debug and tracebacks)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the final summary on stderr.")]
NoColor = Annotated[bool, typer.Option("--no-color", help="No colours on stderr (NO_COLOR is honoured too).")]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML config file (default: $CASSR_CONFIG, then the user config file).",
        dir_okay=False,
        show_default=False,
    ),
]
WeightsDir = Annotated[
    Path | None,
    typer.Option(
        "--weights-dir",
        help="Weights directory (default: $CASSR_WEIGHTS_DIR, then the user cache directory).",
        file_okay=False,
        show_default=False,
    ),
]


def begin(ctx: typer.Context, *, verbose: int = 0, quiet: bool = False, no_color: bool = False) -> ui.InvocationState:
    """Record the output options for this invocation and set up logging; returns the state."""
    state = ctx.obj if isinstance(ctx.obj, ui.InvocationState) else ui.InvocationState()
    ctx.obj = state
    state.verbosity = verbose
    state.quiet = quiet
    state.no_color = no_color
    state.consoles.clear()
    ui.setup_logging(state)
    return state
