"""`cassr doctor`: is this machine ready? Versions, devices, precisions, attention kernels, weights."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cassr_cli.cli import options


def register(app: typer.Typer) -> None:
    """Add ``doctor`` to ``app``."""

    @app.command()
    def doctor(
        ctx: typer.Context,
        weights_dir: options.WeightsDir = None,
        config: options.ConfigFile = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")] = False,
        no_color: options.NoColor = False,
    ) -> None:
        """Report torch/CUDA versions, devices and memory, precisions, attention kernels and weights."""
        from cassr_cli.cli.weights_cmd import model_rows
        from cassr_cli.config import resolve_config
        from cassr_cli.errors import CassrError
        from cassr_cli.runtime.report import environment_report
        from cassr_cli.weights.manifest import load_manifest
        from cassr_cli.weights.store import resolve_weights_dir

        state = options.begin(ctx, no_color=no_color)
        resolved = resolve_config({"weights_dir": str(weights_dir) if weights_dir else None}, config_file=config)
        wdir = resolve_weights_dir(resolved.config.weights_dir)
        report = environment_report()
        try:
            models = [{k: r[k] for k in ("name", "status", "detail")} for r in model_rows(load_manifest(), wdir)]
        except CassrError as err:  # an unreadable $CASSR_MANIFEST is reported, not fatal
            models = [{"name": "manifest", "status": "error", "detail": err.message}]
        report["weights"] = {"directory": str(wdir), "models": models}
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        _print_report(report, state)


def _print_report(report: dict[str, Any], state: Any) -> None:
    from rich.console import Console

    console = Console(no_color=state.no_color or None, highlight=False, soft_wrap=True)
    packages = report["packages"]
    console.print(f"[bold]cassr[/] {packages.get('cassr')}  ·  Python {report['python']}  ·  {report['platform']}")
    console.print(
        "packages: " + ", ".join(f"{k} {v}" for k, v in packages.items() if v and k != "cassr")
    )
    missing = [k for k, v in packages.items() if v is None and k not in ("xformers", "accelerate")]
    if missing:
        console.print(f"[red]missing packages:[/] {', '.join(missing)}")
    cuda = report["cuda"]
    if cuda["available"]:
        console.print(f"CUDA: torch built for {cuda['torch_cuda_version']}, cuDNN {cuda['cudnn']}")
        for dev in cuda["devices"]:
            console.print(
                f"  cuda:{dev['index']} {dev['name']} (sm {dev['capability']}): "
                f"{dev['memory_free_gib']} / {dev['memory_total_gib']} GiB free; "
                f"fp16 yes, bf16 {'yes' if dev['bf16'] else 'no'}"
            )
    else:
        console.print("[yellow]CUDA: not available[/] — cassr will run on the CPU (fp32), which is slow")
    if report["mps"]:
        console.print("MPS (Apple GPU): available")
    att = report["attention"]
    console.print(
        f"attention: SDPA {'yes' if att['sdpa'] else 'no'} (flash {'on' if att['sdpa_flash_enabled'] else 'off'}, "
        f"memory-efficient {'on' if att['sdpa_mem_efficient_enabled'] else 'off'}); "
        f"xformers {'installed' if att['xformers_installed'] else 'not installed (optional)'}"
    )
    weights = report["weights"]
    console.print(f"weights: {weights['directory']}")
    if not weights["models"]:
        console.print("  nothing installed — run: cassr download-weights")
    for model in weights["models"]:
        console.print(f"  {model['name']}: {model['status']}" + (f" ({model['detail']})" if model.get("detail") else ""))
