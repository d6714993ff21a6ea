"""``cassr eval HR OUT (--lr LR | --degrade bicubic|realesrgan | --no-reference)``: run variants through the
runner, score them with the literature's metrics, and report (stderr table, metrics.json/csv,
report.html, sheet.png; ``--json`` lines on stdout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cassr_cli.cli import options, ui
from cassr_cli.cli.config_options import parse_config_flags, with_config_options

EXAMPLES = """
Examples:

  cassr eval Set5/HR out/ --lr Set5/LR_bicubic/X4

  cassr eval set5_x4/ out/ --lr set5_x4/ --only bicubic,stage1

  cassr eval DIV2K_valid_HR/ out/ --degrade realesrgan --seed 0 --variant fast="--steps 5 --guidance-mode cached"

  cassr eval photos/ out/ --no-reference --json > scores.jsonl
"""

PANEL = "Evaluation"


def register(app: typer.Typer) -> None:
    """Add ``eval`` to ``app``."""

    @app.command("eval", epilog=EXAMPLES, no_args_is_help=True)
    @with_config_options
    def eval_command(
        ctx: typer.Context,
        hr: Annotated[
            str,
            typer.Argument(
                help="HR reference images: a folder, file or glob (with --no-reference: the photos to upscale).",
                show_default=False,
            ),
        ],
        out: Annotated[Path, typer.Argument(help="Output folder: one sub-folder per variant, and the reports.", show_default=False)],
        lr: Annotated[str | None, typer.Option("--lr", help="LR inputs paired with HR by name (X_HR/X_LR, X/Xx4, or the same name).", rich_help_panel=PANEL, show_default=False)] = None,
        degrade: Annotated[str | None, typer.Option("--degrade", help="Make the LR inputs from HR: bicubic (MATLAB imresize) or realesrgan (the training degradations, seeded by --seed).", rich_help_panel=PANEL, show_default=False)] = None,
        no_reference: Annotated[bool, typer.Option("--no-reference", help="No HR: upscale the given photos and score them with no-reference metrics only.", rich_help_panel=PANEL)] = False,
        variant: Annotated[list[str] | None, typer.Option("--variant", help='Another variant: NAME="upscale options" on top of the shared ones (repeatable).', rich_help_panel=PANEL, show_default=False)] = None,
        only: Annotated[str | None, typer.Option("--only", help="Run only these variants (comma-separated names, e.g. bicubic,stage1).", rich_help_panel=PANEL, show_default=False)] = None,
        metrics: Annotated[str | None, typer.Option("--metrics", help="Metrics to compute (comma-separated: psnr_y, ssim_y, psnr_rgb, lpips, dists, niqe, musiq, maniqa, clipiqa), or all.", rich_help_panel=PANEL, show_default=False)] = None,
        crop: Annotated[str | None, typer.Option("--crop", help="Report crop x,y,w,h in output pixels (default: the most detailed region of each image).", rich_help_panel=PANEL, show_default=False)] = None,
        download_metric_weights: Annotated[bool, typer.Option("--download-metric-weights", help="Let pyiqa download missing weights of learned metrics (needs internet).", rich_help_panel=PANEL)] = False,
        # --- reporting ----------------------------------------------------------------------------
        config: options.ConfigFile = None,
        as_json: Annotated[bool, typer.Option("--json", help="stdout: one JSON object per (image, variant), as cassr upscale --json, with its metrics.", rich_help_panel="Reporting")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr (only shown on a terminal).", rich_help_panel="Reporting")] = True,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
        settings: dict[str, Any] | None = None,
    ) -> int:
        """Measure quality: run variants over images, score them (PSNR/SSIM/LPIPS/DISTS/NIQE/MUSIQ/MANIQA/CLIPIQA), report."""
        from cassr_cli.cli.eval_view import EvalView
        from cassr_cli.evaluation.metrics.suite import parse_metric_keys
        from cassr_cli.evaluation.plan import EvalPlan, plan_images
        from cassr_cli.evaluation.report.crops import parse_crop
        from cassr_cli.evaluation.session import run_evaluation
        from cassr_cli.evaluation.variants import build_variants, split_variant

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        extra = []
        for text in variant or []:
            name, option_text = split_variant(text)
            extra.append((name, parse_config_flags(option_text, what=f"options of variant {name!r}")))
        names = [n.strip() for n in only.split(",") if n.strip()] if only else None
        base, variants = build_variants(settings or {}, extra, only=names, config_file=config)
        scale = int(base.scale)
        mode, images, notes = plan_images(
            hr, lr=lr, degrade=degrade, no_reference=no_reference, scale=scale, recursive=base.recursive, out=out
        )
        plan = EvalPlan(
            out=out,
            mode=mode,
            images=images,
            scale=scale,
            variants=variants,
            metrics=parse_metric_keys(metrics, with_reference=mode != "no-reference"),
            sources={"hr": hr, "lr": lr},
            degrade=degrade,
            seed=base.seed,
            crop=parse_crop(crop) if crop else None,
            overwrite=base.overwrite,
            fail_fast=base.fail_fast,
            max_pixels=base.max_pixels,
            device=base.device,
            allow_download=download_metric_weights,
            notes=notes,
        )
        view = EvalView(state, as_json=as_json, show_progress=progress and ui.is_interactive(state))
        for note in notes:
            view.note(note)
        with view:
            results = run_evaluation(plan, view)
        view.print_report(results)
        return results.exit_code
