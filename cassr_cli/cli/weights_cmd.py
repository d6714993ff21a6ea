"""`cassr download-weights` and `cassr weights list|verify`.

stdout carries data only: ``download-weights`` prints each ready model's folder (``--dry-run``: the file
list and the total), ``weights list`` the table (or ``--json``). Messages, progress bars (only when stderr
is a terminal) and the licence line of every model go to stderr. Errors are raised as
:class:`~cassr_cli.errors.CassrError` subclasses; ``cli/app.py`` turns them into exit codes (2 usage, 3
download/verification failure, missing or corrupt weights).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cassr_cli.cli import options, ui

if TYPE_CHECKING:
    from cassr_cli.weights.manifest import Manifest, ModelSpec

ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="Weights manifest TOML (default: $CASSR_MANIFEST, then the one shipped with cassr).",
        dir_okay=False,
        show_default=False,
    ),
]
Names = Annotated[
    list[str] | None,
    typer.Argument(help="Model names (see `cassr weights list`).", show_default=False),
]

EXAMPLES = """Examples:

  cassr download-weights                      # the default models (sd21-base, realesrgan-x4plus)

  cassr download-weights realesrgan-x2plus    # an optional model

  cassr download-weights --dry-run            # what would be downloaded, and how much
"""


def register(app: typer.Typer) -> None:
    """Add ``download-weights`` and the ``weights`` group to ``app``."""

    @app.command("download-weights", epilog=EXAMPLES)
    def download_weights(
        ctx: typer.Context,
        names: Names = None,
        force: Annotated[bool, typer.Option("--force", help="Download again even if installed.")] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="List the files and the total size; download nothing.")
        ] = False,
        manifest: ManifestOpt = None,
        weights_dir: options.WeightsDir = None,
        config: options.ConfigFile = None,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
    ) -> None:
        """Download, verify (sha256) and install model weights; resumes interrupted downloads."""
        from cassr_cli.weights.manifest import load_manifest

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        loaded = load_manifest(manifest)
        models = select_models(loaded, names or [])
        wdir = _weights_dir(weights_dir, config)
        if dry_run:
            _dry_run(state, models, wdir, force)
        else:
            _download(state, models, wdir, force)

    weights_app = typer.Typer(
        name="weights",
        help="Show and check installed model weights.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @weights_app.command("list")
    def list_cmd(
        ctx: typer.Context,
        manifest: ManifestOpt = None,
        weights_dir: options.WeightsDir = None,
        config: options.ConfigFile = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON array instead of a table.")] = False,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
    ) -> None:
        """Each model: installed / partial / corrupt / missing, size, licence (no hashing)."""
        from cassr_cli.weights.manifest import load_manifest

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        loaded = load_manifest(manifest)
        wdir = _weights_dir(weights_dir, config)
        rows = model_rows(loaded, wdir)
        ui.note(state, f"weights directory: {wdir}")
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        _print_table(rows)

    @weights_app.command("verify")
    def verify_cmd(
        ctx: typer.Context,
        names: Names = None,
        manifest: ManifestOpt = None,
        weights_dir: options.WeightsDir = None,
        config: options.ConfigFile = None,
        verbose: options.Verbose = 0,
        quiet: options.Quiet = False,
        no_color: options.NoColor = False,
    ) -> None:
        """Re-hash installed files (all installed models by default); exit 3 naming any mismatch."""
        from cassr_cli.weights.manifest import load_manifest

        state = options.begin(ctx, verbose=verbose, quiet=quiet, no_color=no_color)
        loaded = load_manifest(manifest)
        wdir = _weights_dir(weights_dir, config)
        _verify(state, loaded, wdir, names or [])

    app.add_typer(weights_app, name="weights")


# --- helpers --------------------------------------------------------------------------------------------


def _weights_dir(flag: Path | None, config: Path | None) -> Path:
    from cassr_cli.config import resolve_config
    from cassr_cli.weights.store import resolve_weights_dir

    resolved = resolve_config({"weights_dir": str(flag) if flag else None}, config_file=config)
    return resolve_weights_dir(resolved.config.weights_dir)


def select_models(manifest: Manifest, names: list[str]) -> tuple[ModelSpec, ...]:
    """``names`` in order without repeats (the manifest's defaults when empty); UsageError lists the valid
    names."""
    from cassr_cli.errors import UsageError

    if unknown := [n for n in names if manifest.get(n) is None]:
        listed = ", ".join(repr(n) for n in unknown)
        hint = "see `cassr weights list`"
        raise UsageError(f"unknown model {listed}; valid names: {', '.join(manifest.names)}", hint=hint)
    chosen = [manifest.get(n) for n in dict.fromkeys(names)]
    return tuple(m for m in chosen if m is not None) if names else manifest.defaults


def format_size(n: int) -> str:
    """Bytes in decimal units, like Rich's download column: ``2.58 GB``, ``67.0 MB``, ``543 B``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _licence_line(model: ModelSpec) -> str:
    lic = model.licence
    where = f" <{lic.url}>" if lic.url else ""
    return f"licence: {lic.name}{where} — {lic.note}"


class _Bars:
    """Rich progress bars (bytes, speed, ETA) on stderr; a :class:`ProgressCallback`."""

    def __init__(self, state: ui.InvocationState) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=state.console(),
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, file: str, done: int, total: int) -> None:
        task = self.tasks.get(file)
        if task is None:
            task = self.tasks[file] = self.progress.add_task(file, total=total)
        self.progress.update(task, completed=done, total=max(total, done))

    def __enter__(self) -> _Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _dry_run(state: ui.InvocationState, models: tuple[ModelSpec, ...], wdir: Path, force: bool) -> None:
    from huggingface_hub import hf_hub_url

    from cassr_cli.weights.download import hub_endpoint
    from cassr_cli.weights.store import plan_model

    total = count = 0
    for model in models:
        for item in plan_model(wdir, model, force=force):
            url = item.entry.url or hf_hub_url(  # no url: the first hub source
                model.hub[0].repo, item.entry.path, revision=model.hub[0].revision, endpoint=hub_endpoint()
            )
            size = format_size(item.entry.size) + (" (derived)" if item.entry.size_derived else "")
            typer.echo(f"{model.name}/{item.entry.path}\t{size}\t{item.action}\t{url}")
            if item.action != "present":
                total += item.entry.size - item.have
                count += 1
        ui.note(state, f"{model.name}: {_licence_line(model)}")
    typer.echo(f"total: {count} file(s) to fetch, {total:,} bytes ({format_size(total)}) into {wdir}")


def _download(state: ui.InvocationState, models: tuple[ModelSpec, ...], wdir: Path, force: bool) -> None:
    from cassr_cli.weights.download import install_model
    from cassr_cli.weights.store import plan_model

    console = state.console()
    for model in models:
        todo = [f for f in plan_model(wdir, model, force=force) if f.action != "present"]
        if todo:
            size = format_size(sum(f.entry.size - f.have for f in todo))
            ui.note(state, f"{model.name}: up to {size} to fetch into {wdir / model.name}")
        if ui.is_interactive(state):
            with _Bars(state) as bars:
                result = install_model(wdir, model, force=force, progress=bars)
        else:
            result = install_model(wdir, model, force=force)
        what = "already installed" if result.already_installed else "installed and verified"
        console.print(
            f"{model.name}: {what} ({format_size(model.total_size)}) in {result.folder}",
            markup=False,
        )
        console.print(f"  {_licence_line(model)}", markup=False)
        typer.echo(str(result.folder))


def model_status(weights_dir: Path, model: ModelSpec) -> tuple[str, str]:
    """``(status, detail)`` without hashing: ``installed``, ``partial`` (started, or installed from another
    manifest), ``corrupt`` (a stamped file is gone or has another size) or ``missing``."""
    from cassr_cli.errors import WeightsCorruptError
    from cassr_cli.weights.store import check_model, plan_model

    try:
        stamp, problems = check_model(weights_dir, model.name)
    except WeightsCorruptError:
        return "corrupt", "damaged install stamp"
    if problems:
        return "corrupt", "; ".join(p.describe() for p in problems)
    plan = plan_model(weights_dir, model)
    if all(f.action == "present" for f in plan):
        return "installed", ""
    if stamp is not None:
        return "partial", "installed from another manifest; download again"
    started = sum(1 for f in plan if f.action != "download")
    return ("partial", f"{started} of {len(plan)} files present or started") if started else ("missing", "")


def model_rows(manifest: Manifest, wdir: Path) -> list[dict[str, Any]]:
    """One row per manifest model (status without hashing; ``detail`` says what to do), then the other
    folders of ``wdir``: ``installed (not in manifest)`` when stamped (test weights, adapters), else
    ``unknown folder``. ``weights list`` and ``doctor`` print these."""
    from cassr_cli.errors import CassrError
    from cassr_cli.weights.store import download_command, read_stamp

    rows: list[dict[str, Any]] = []
    for model in manifest.models:
        status, detail = model_status(wdir, model)
        if status == "installed":
            detail = f"{format_size(model.total_size)}, {model.licence.name}"
        elif status == "missing":
            detail = f"run: {download_command(model.name, wdir)}" if model.default else "optional"
        row = {"kind": model.kind, "default": model.default, "size": model.total_size, "licence": model.licence.name}
        rows.append({"name": model.name, **row, "status": status, "detail": detail, "folder": str(wdir / model.name)})
    for folder in sorted(wdir.iterdir()) if wdir.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith(".") and manifest.get(folder.name) is None:
            try:
                status = "installed (not in manifest)" if read_stamp(folder) is not None else "unknown folder"
            except CassrError:
                status = "unknown folder"
            size = format_size(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))
            row = {"kind": "", "default": False, "size": None, "licence": "", "status": status, "detail": size}
            rows.append({"name": folder.name, **row, "folder": str(folder)})
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ("NAME", "KIND", "DEFAULT", "STATUS", "SIZE", "LICENCE", "DETAIL")
    table = [header] + [
        (
            r["name"],
            r["kind"],
            "yes" if r["default"] else "",
            r["status"],
            format_size(r["size"]) if r["size"] else "",
            r["licence"],
            r["detail"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _verify(state: ui.InvocationState, manifest: Manifest, wdir: Path, names: list[str]) -> None:
    from cassr_cli.errors import UsageError, WeightsCorruptError, WeightsMissingError
    from cassr_cli.weights.store import check_model, download_command

    stamped = (
        sorted(p.name for p in wdir.iterdir() if (p / ".cassr-install.json").is_file())
        if wdir.is_dir()
        else []
    )
    if names:
        valid = list(dict.fromkeys([*manifest.names, *stamped]))
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise UsageError(
                f"unknown model {', '.join(repr(n) for n in unknown)}; valid names: {', '.join(valid)}"
            )
        targets = list(dict.fromkeys(names))
    else:
        targets = [n for n in manifest.names if n in stamped] + [
            n for n in stamped if manifest.get(n) is None
        ]
        if not targets:
            raise WeightsMissingError(f"no installed models in {wdir}", hint="run: cassr download-weights")
    failed: list[str] = []
    bad_files: list[str] = []
    console = state.console()
    bars = _Bars(state) if ui.is_interactive(state) else None
    with bars if bars is not None else contextlib.nullcontext():
        for name in targets:
            stamp, problems = check_model(wdir, name, rehash=True, progress=bars)
            if stamp is None:
                hint = f"run: {download_command(name, wdir)}"
                raise WeightsMissingError(f"weights {name!r} are not installed in {wdir}", hint=hint)
            for problem in problems:
                ui.error(state, f"{name}/{problem.describe()}")
                bad_files.append(f"{name}/{problem.path}")
            if problems:
                failed.append(name)
                console.print(f"{name}: {len(problems)} of {len(stamp)} file(s) FAILED", markup=False)
                continue
            console.print(f"{name}: ok ({len(stamp)} files re-hashed)", markup=False)
            model = manifest.get(name)
            if model is not None and any(stamp.get(f.path, (0, ""))[1] != f.sha256 for f in model.files):
                ui.warn(
                    state, f"{name} was installed from another manifest; run: {download_command(name, wdir)}"
                )
    if failed:
        raise WeightsCorruptError(
            f"{len(bad_files)} file(s) failed verification: {', '.join(bad_files)}",
            hint=f"run: {download_command(failed, wdir, force=True)}",
        )
