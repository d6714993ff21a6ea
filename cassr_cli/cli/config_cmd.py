"""`cassr config show|path`: the effective configuration and where each value came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cassr_cli.cli import options


def register(app: typer.Typer) -> None:
    """Add the ``config`` command group to ``app``."""
    group = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)

    @group.command("show")
    def show(
        ctx: typer.Context,
        config: options.ConfigFile = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
        no_color: options.NoColor = False,
    ) -> None:
        """Print every upscale setting, its effective value and its source (flag, env, config, default)."""
        from rich.table import Table

        from cassr_cli.config import describe, resolve_config

        state = options.begin(ctx, no_color=no_color)
        resolved = resolve_config({}, config_file=config)
        rows = describe(resolved)
        if as_json:
            payload = {
                "config_file": str(resolved.config_file) if resolved.config_file else None,
                "values": {k: getattr(resolved.config, k) for k, _, _ in rows},
                "sources": {k: src for k, _, src in rows},
            }
            typer.echo(json.dumps(payload, indent=2))
            return
        table = Table(title=None, show_edge=False, pad_edge=False)
        table.add_column("key")
        table.add_column("value")
        table.add_column("source")
        for key, value, source in rows:
            table.add_row(key, value, source)
        # Data command: the table is the output, so it goes to stdout.
        from rich.console import Console

        Console(no_color=state.no_color or None, highlight=False).print(table)

    @group.command("path")
    def path() -> None:
        """Print the location of the user config file (which may not exist yet)."""
        from cassr_cli.config import user_config_path

        typer.echo(str(user_config_path()))

    app.add_typer(group, name="config")
