"""``cassr train CONFIG.toml``: train the multi-attention adapter (``cassr_cli/training/``).

Runs on one device as it is, and on several GPUs or nodes under accelerate::

    accelerate launch --num_processes 4 -m cassr_cli train config.toml

stdout carries the final adapter path (data); progress lines go to stderr (main process only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cassr_cli.cli import options, ui

EXAMPLES = """
Examples:

  cassr train train.toml

  cassr train train.toml --set train.max_steps=50000 --set optim.learning_rate=5e-5

  cassr train train.toml --resume latest

  accelerate launch --num_processes 8 -m cassr_cli train train.toml
"""


def register(app: typer.Typer) -> None:
    """Add ``train`` to ``app``."""

    @app.command(epilog=EXAMPLES, no_args_is_help=True)
    def train(
        ctx: typer.Context,
        config: Annotated[
            Path,
            typer.Argument(help="Training config (TOML); see docs/training.md.", dir_okay=False, show_default=False),
        ],
        overrides: Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                metavar="KEY=VALUE",
                help="Override a config value (dotted keys for sections, TOML values), e.g. --set optim.learning_rate=2e-4. Repeatable.",
                show_default=False,
            ),
        ] = None,
        resume: Annotated[
            str | None,
            typer.Option(
                "--resume",
                metavar="PATH|latest",
                help="Continue from a checkpoint folder, or the newest checkpoint in output_dir.",
                show_default=False,
            ),
        ] = None,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
    ) -> int:
        """Train the stage-2 multi-attention adapter (model.kind = "multiattn", a file for cassr upscale --adapter)
        or the SCEdit activation tuner (model.kind = "scedit", a file for cassr upscale --activation)."""
        from cassr_cli.errors import ConfigError
        from cassr_cli.training.config import load_train_config

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        if not _is_main_process():  # under `accelerate launch`, only rank 0 talks to the user
            state.quiet = True
        if not config.is_file():
            raise ConfigError(f"training config not found: {config}")
        train_config = load_train_config(config, overrides or [])

        from cassr_cli.engine.base_model import quiet_loading
        from cassr_cli.training.loop import train as run_training

        def show(record: dict[str, object]) -> None:
            if state.quiet:
                return
            state.console().print(
                f"step {record['step']}/{record['max_steps']}  loss {record['loss']:.5f}  "
                f"lr {record['lr']:.2e}  {record['seconds_per_step']:.2f} s/step  "
                f"{record['samples_per_second']:.1f} samples/s",
                highlight=False,
            )

        ui.note(state, f"training into {train_config.output_dir} for {train_config.train.max_steps} steps")
        with quiet_loading():
            result = run_training(train_config, resume=resume, on_log=show)
        if result.adapter_path is not None:  # main process only
            option = "--activation" if train_config.model.kind == "scedit" else "--adapter"
            ui.note(state, f"done at step {result.step}: cassr upscale {option} {result.adapter_path} …")
            typer.echo(str(result.adapter_path))
        return 0


def _is_main_process() -> bool:
    """Rank 0 (or not launched by a distributed launcher): read from the launcher's environment, so
    that accelerate's state is created only once, by the trainer, with the config's settings."""
    return os.environ.get("RANK", "0") == "0"
