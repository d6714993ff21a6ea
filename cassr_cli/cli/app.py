"""The ``cassr`` command: the Typer app and the one place where errors become exit codes.

Importing this module must stay cheap: no torch, no diffusers. Commands import heavy modules inside
their functions.
"""

from __future__ import annotations

import errno
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cassr_cli._version import __version__
from cassr_cli.cli import ui
from cassr_cli.errors import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CassrError,
)

try:  # Typer ≥ 0.26 carries its own copy of Click, whose exceptions are not Click's classes
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover - older Typer runs on Click itself
    from click import exceptions as _click_exceptions  # type: ignore[no-redef]

_CLICK_ERRORS = (_click_exceptions.ClickException,)
_CLICK_ABORTS = (typer.Abort,)

EPILOG = (
    "Exit codes: 0 done (skips included) · 1 some images failed · 2 usage error · "
    "3 environment not ready (weights, device) · 130 interrupted."
)


class CassrGroup(TyperGroup):
    """The root command group; its :meth:`main` is the error → exit-code boundary.

    Every invocation (the console script and in-process test runners alike) gets a fresh
    :class:`~cassr_cli.cli.ui.InvocationState` as ``ctx.obj``; commands record verbosity there so the
    boundary knows whether to show a traceback.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        state = ui.InvocationState()
        extra.setdefault("obj", state)
        code = run_guarded(
            lambda: super(CassrGroup, self).main(
                args, prog_name or "cassr", complete_var, standalone_mode=False, **extra
            ),
            state,
        )
        if standalone_mode:
            sys.exit(code)
        return code


def run_guarded(call: Any, state: ui.InvocationState) -> int:
    """Run a click ``main`` in non-standalone mode and map every outcome to an exit code."""
    try:
        result = call()
    except _CLICK_ERRORS as err:
        _show_click_error(err, state)
        return err.exit_code if err.exit_code else EXIT_USAGE
    except _CLICK_ABORTS:
        ui.error(state, "interrupted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        ui.error(state, "interrupted")
        return EXIT_INTERRUPTED
    except CassrError as err:
        if state.debug:
            traceback.print_exc(file=state.console().file)
        ui.error(state, err.message, err.hint)
        return err.exit_code
    except OSError as err:
        if err.errno == errno.EPIPE:  # stdout closed by the reader (e.g. `| head`): not our failure
            return EXIT_FAILURES
        return _unexpected(state, err)
    except Exception as err:  # the last line of defence: one line, traceback only on request
        return _unexpected(state, err)
    if isinstance(result, int):
        return result
    return 0


def _show_click_error(err: Exception, state: ui.InvocationState) -> None:
    if type(err).__name__ == "NoArgsIsHelpError":  # help was already printed; nothing is wrong
        return
    try:
        from typer import rich_utils

        rich_utils.rich_format_error(err)  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - fall back to Click's plain rendering
        err.show()  # type: ignore[attr-defined]


def _unexpected(state: ui.InvocationState, err: BaseException) -> int:
    if state.debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=state.console().file)
    ui.error(
        state,
        f"internal error: {type(err).__name__}: {err}",
        None if state.debug else "rerun with -vv or CASSR_DEBUG=1 for the traceback, and report it",
    )
    return EXIT_FAILURES


app = typer.Typer(
    cls=CassrGroup,
    name="cassr",
    help="Upscale folders of real-world photos with CasSR cascaded diffusion super-resolution.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cassr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version_callback, is_eager=True),
    ] = False,
) -> None:
    """Upscale folders of real-world photos with CasSR cascaded diffusion super-resolution."""


def _register_commands() -> None:
    # Each module adds its commands to `app`; all of them keep heavy imports inside the functions.
    from cassr_cli.cli import config_cmd, doctor, eval_cmd, train_cmd, upscale, weights_cmd

    for module in (upscale, eval_cmd, weights_cmd, config_cmd, doctor, train_cmd):
        module.register(app)


_register_commands()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``cassr``)."""
    app(args=list(argv) if argv is not None else None, prog_name="cassr")
