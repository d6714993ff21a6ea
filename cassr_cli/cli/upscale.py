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
from cassr_cli.config import FIELDS
from cassr_cli.errors import UsageError

MODEL = "Model"
DIFFUSION = "Diffusion (stage 2)"
ENGINE = "Engine: tiles, precision, device"
OUTPUT = "Inputs and outputs"
REPORTING = "Reporting"

EXAMPLES = """
Examples:

  cassr upscale photos/ out/ --scale 4

  cassr upscale 'shots/**/*.JPG' out/ --recursive --format png --suffix _x4

  find shots -name '*.jpg' | cassr upscale - out/ --steps 0

  cassr upscale scan.tif out/ --json > results.jsonl
"""


def _h(name: str) -> str:
    """Help text of a config key with its choices, default and environment variable, straight from the
    dataclass so help and behaviour cannot drift apart."""
    f = FIELDS[name]
    default = f.default
    if default is None:
        shown = "none"
    elif isinstance(default, bool):
        shown = str(default).lower()
    elif default == "":
        shown = "empty"
    else:
        shown = str(default)
    choices = f.metadata.get("choices")
    text = f.metadata["help"].rstrip(".")
    if choices:
        text += f": {' | '.join(choices)}"
    return f"{text}. (default {shown}; env CASSR_{name.upper()})"


def register(app: typer.Typer) -> None:
    """Add ``upscale`` to ``app``."""

    @app.command(epilog=EXAMPLES, no_args_is_help=True)
    def upscale(
        ctx: typer.Context,
        sources: Annotated[
            list[str],
            typer.Argument(help="Images, folders, globs, or '-' to read paths (one per line) from stdin.", show_default=False),
        ],
        dest: Annotated[Path, typer.Argument(help="Output folder (created if missing).", show_default=False)],
        # --- model --------------------------------------------------------------------------------
        scale: Annotated[float | None, typer.Option("--scale", "-s", help=_h("scale"), rich_help_panel=MODEL, show_default=False)] = None,
        steps: Annotated[int | None, typer.Option(help=_h("steps"), rich_help_panel=MODEL, show_default=False)] = None,
        activation: Annotated[str | None, typer.Option(help=_h("activation"), rich_help_panel=MODEL, show_default=False)] = None,
        base_model: Annotated[str | None, typer.Option(help=_h("base_model"), rich_help_panel=MODEL, show_default=False)] = None,
        adapter: Annotated[str | None, typer.Option(help=_h("adapter"), rich_help_panel=MODEL, show_default=False)] = None,
        weights_dir: Annotated[str | None, typer.Option(help=_h("weights_dir"), rich_help_panel=MODEL, show_default=False)] = None,
        seed: Annotated[int | None, typer.Option(help=_h("seed"), rich_help_panel=MODEL, show_default=False)] = None,
        # --- diffusion ----------------------------------------------------------------------------
        strength: Annotated[float | None, typer.Option(help=_h("strength"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        scheduler: Annotated[str | None, typer.Option(help=_h("scheduler"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        guidance_mode: Annotated[str | None, typer.Option(help=_h("guidance_mode"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        guidance_timestep: Annotated[int | None, typer.Option(help=_h("guidance_timestep"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        lr_weight: Annotated[float | None, typer.Option(help=_h("lr_weight"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        ref_weight: Annotated[float | None, typer.Option(help=_h("ref_weight"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        prompt: Annotated[str | None, typer.Option(help=_h("prompt"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        negative_prompt: Annotated[str | None, typer.Option(help=_h("negative_prompt"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        guidance_scale: Annotated[float | None, typer.Option(help=_h("guidance_scale"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        color_fix: Annotated[str | None, typer.Option(help=_h("color_fix"), rich_help_panel=DIFFUSION, show_default=False)] = None,
        # --- engine -------------------------------------------------------------------------------
        tile_size: Annotated[int | None, typer.Option(help=_h("tile_size"), rich_help_panel=ENGINE, show_default=False)] = None,
        tile_overlap: Annotated[int | None, typer.Option(help=_h("tile_overlap"), rich_help_panel=ENGINE, show_default=False)] = None,
        tile_batch: Annotated[int | None, typer.Option(help=_h("tile_batch"), rich_help_panel=ENGINE, show_default=False)] = None,
        vae_tile_size: Annotated[int | None, typer.Option(help=_h("vae_tile_size"), rich_help_panel=ENGINE, show_default=False)] = None,
        activation_tile_size: Annotated[int | None, typer.Option(help=_h("activation_tile_size"), rich_help_panel=ENGINE, show_default=False)] = None,
        activation_tile_overlap: Annotated[int | None, typer.Option(help=_h("activation_tile_overlap"), rich_help_panel=ENGINE, show_default=False)] = None,
        device: Annotated[str | None, typer.Option(help=_h("device"), rich_help_panel=ENGINE, show_default=False)] = None,
        dtype: Annotated[str | None, typer.Option(help=_h("dtype"), rich_help_panel=ENGINE, show_default=False)] = None,
        attention: Annotated[str | None, typer.Option(help=_h("attention"), rich_help_panel=ENGINE, show_default=False)] = None,
        # --- inputs and outputs -------------------------------------------------------------------
        recursive: Annotated[bool | None, typer.Option("--recursive/--no-recursive", "-r", help=_h("recursive"), rich_help_panel=OUTPUT, show_default=False)] = None,
        suffix: Annotated[str | None, typer.Option(help=_h("suffix"), rich_help_panel=OUTPUT, show_default=False)] = None,
        output_format: Annotated[str | None, typer.Option("--format", "-f", help=_h("format"), rich_help_panel=OUTPUT, show_default=False)] = None,
        quality: Annotated[int | None, typer.Option(help=_h("quality"), rich_help_panel=OUTPUT, show_default=False)] = None,
        overwrite: Annotated[bool | None, typer.Option("--overwrite/--no-overwrite", help=_h("overwrite"), rich_help_panel=OUTPUT, show_default=False)] = None,
        fail_fast: Annotated[bool | None, typer.Option("--fail-fast/--no-fail-fast", help=_h("fail_fast"), rich_help_panel=OUTPUT, show_default=False)] = None,
        max_pixels: Annotated[int | None, typer.Option(help=_h("max_pixels"), rich_help_panel=OUTPUT, show_default=False)] = None,
        max_host_memory_gb: Annotated[float | None, typer.Option(help=_h("max_host_memory_gb"), rich_help_panel=OUTPUT, show_default=False)] = None,
        # --- reporting ----------------------------------------------------------------------------
        config: options.ConfigFile = None,
        as_json: Annotated[bool, typer.Option("--json", help="stdout: one JSON object per image instead of output paths.", rich_help_panel=REPORTING)] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr (only shown on a terminal).", rich_help_panel=REPORTING)] = True,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
    ) -> int:
        """Upscale images (files, folders, globs, or '-' for a list on stdin) into DEST."""
        from cassr_cli.cli.batch_view import BatchView
        from cassr_cli.config import resolve_config
        from cassr_cli.runner import plan_batch, run_batch

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        flags: dict[str, Any] = {
            "scale": scale, "steps": steps, "activation": activation, "base_model": base_model,
            "adapter": adapter, "weights_dir": weights_dir, "seed": seed, "strength": strength,
            "scheduler": scheduler, "guidance_mode": guidance_mode, "guidance_timestep": guidance_timestep,
            "lr_weight": lr_weight, "ref_weight": ref_weight, "prompt": prompt,
            "negative_prompt": negative_prompt, "guidance_scale": guidance_scale, "color_fix": color_fix,
            "tile_size": tile_size, "tile_overlap": tile_overlap, "tile_batch": tile_batch,
            "vae_tile_size": vae_tile_size, "activation_tile_size": activation_tile_size,
            "activation_tile_overlap": activation_tile_overlap, "device": device, "dtype": dtype,
            "attention": attention, "recursive": recursive, "suffix": suffix, "format": output_format,
            "quality": quality, "overwrite": overwrite, "fail_fast": fail_fast, "max_pixels": max_pixels,
            "max_host_memory_gb": max_host_memory_gb,
        }
        resolved = resolve_config(flags, config_file=config)
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
