"""Everything cassr shows a human: the stderr console, logging setup, messages and progress.

This is the only module (with the rest of ``cli/``) that imports Rich. stdout is never written here:
it carries data only (output paths or JSON lines), see ``cli/upscale.py``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

PACKAGE_LOGGER = "cassr_cli"


@dataclass
class InvocationState:
    """Per-invocation state shared between the error boundary and the command that runs.

    A fresh instance is created for every call of the CLI (``cli/app.py``), so there is no global state.
    """

    verbosity: int = 0
    quiet: bool = False
    no_color: bool = False
    stderr: TextIO | None = None
    consoles: list[Console] = field(default_factory=list)

    @property
    def debug(self) -> bool:
        """Show tracebacks: ``-vv`` or ``CASSR_DEBUG=1``."""
        return self.verbosity >= 2 or os.environ.get("CASSR_DEBUG", "") not in ("", "0")

    def console(self) -> Console:
        """The stderr console for this invocation (created once)."""
        if not self.consoles:
            stream = self.stderr if self.stderr is not None else sys.stderr
            self.consoles.append(
                Console(
                    file=stream,
                    no_color=self.no_color or None,
                    highlight=False,
                    soft_wrap=True,
                )
            )
        return self.consoles[0]


def setup_logging(state: InvocationState) -> None:
    """Route the package logger to the stderr console at the requested verbosity.

    ``-q`` → errors only, default → warnings, ``-v`` → info, ``-vv`` → debug. Handlers added by an
    earlier invocation in the same process are replaced, never stacked.
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_cassr", False):
            logger.removeHandler(handler)
    level = logging.WARNING
    if state.quiet:
        level = logging.ERROR
    elif state.verbosity == 1:
        level = logging.INFO
    elif state.verbosity >= 2:
        level = logging.DEBUG
    handler = RichHandler(
        console=state.console(),
        show_time=state.verbosity >= 2,
        show_path=state.verbosity >= 2,
        show_level=True,
        markup=False,
        rich_tracebacks=state.verbosity >= 2,
    )
    handler._cassr = True  # type: ignore[attr-defined]
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def error(state: InvocationState, message: str, hint: str | None = None) -> None:
    """One error line (and an optional hint line) on stderr."""
    console = state.console()
    console.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        console.print(f"[dim]hint:[/] {escape(hint)}")


def note(state: InvocationState, message: str) -> None:
    """An informational line on stderr (hidden by ``-q``)."""
    if not state.quiet:
        state.console().print(f"[dim]note:[/] {escape(message)}")


def warn(state: InvocationState, message: str) -> None:
    """A warning line on stderr (hidden by ``-q``)."""
    if not state.quiet:
        state.console().print(f"[yellow]warning:[/] {escape(message)}")


def is_interactive(state: InvocationState) -> bool:
    """True when stderr is a terminal, so progress bars make sense."""
    console = state.console()
    return console.is_terminal and not state.quiet
