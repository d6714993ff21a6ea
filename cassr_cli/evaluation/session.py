"""Running an evaluation: LR inputs → every variant through the runner → scores → reports.

1. **Inputs** (``--degrade``): each HR is mod-cropped and degraded into ``OUT/lr/NAME.png``.
2. **Outputs**: one :func:`cassr_cli.runner.run_batch` per variant into ``OUT/<variant>/`` — models load
   once per variant, existing outputs are reused (``--overwrite`` recomputes), writes are atomic, and
   the per-image stats are kept in ``OUT/<variant>/eval.json`` for later runs.
3. **Scores**: per image, the HR is read once and every variant's output is scored against it with the
   metrics loaded once for the run (:mod:`~cassr_cli.evaluation.scoring`).
4. **Reports**: ``metrics.json``, ``metrics.csv``, ``report.html``, ``sheet.png``.

Progress and results go through an :class:`EvalEvents` object; nothing here prints.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cassr_cli._version import __version__
from cassr_cli.evaluation.bicubic import bicubic_factory
from cassr_cli.evaluation.metrics.suite import LearnedLoader, MetricSuite
from cassr_cli.evaluation.pairing import EvalImage
from cassr_cli.evaluation.plan import EvalPlan
from cassr_cli.evaluation.provenance import FolderRecord, ModelHasher, open_folder, write_record
from cassr_cli.evaluation.results import EvalResults, Outcome
from cassr_cli.evaluation.variants import Variant
from cassr_cli.io.discover import InputItem
from cassr_cli.io.naming import PlannedOutput
from cassr_cli.runner import BatchEvents, BatchPlan, run_batch

if TYPE_CHECKING:
    from cassr_cli.evaluation.metrics.specs import Unavailable

logger = logging.getLogger(__name__)

LR_FOLDER = "lr"


class EvalEvents(Protocol):
    """How an evaluation reports progress and results (the CLI renders them; tests record them)."""

    def note(self, message: str) -> None: ...

    def metric_unavailable(self, problem: Unavailable) -> None: ...

    def started(self, total: int) -> None:
        """The evaluation has ``total`` steps (inputs to make, outputs to make, outputs to score)."""

    def phase(self, text: str) -> None: ...

    def advance(self) -> None:
        """One step done."""

    def batch_events(self, variant: str) -> BatchEvents:
        """Receives the runner's events while ``variant``'s outputs are made (each finished image is a
        step)."""

    def record(self, record: dict[str, Any]) -> None:
        """One (image, variant) is scored (the ``--json`` line)."""


def run_evaluation(plan: EvalPlan, events: EvalEvents, *, metric_loader: LearnedLoader | None = None) -> EvalResults:
    """Run ``plan`` and write its reports (not after Ctrl-C).

    Raises:
        EnvironmentNotReadyError: model weights missing or corrupt, device unavailable (exit 3) — checked
            for every variant before any output is made.
        UsageError: an output folder holds results of other settings (without ``--overwrite``).
    """
    plan.out.mkdir(parents=True, exist_ok=True)
    results = EvalResults(
        out=plan.out,
        info=_describe(plan),
        variants=list(plan.variants),
        images=[str(i.name) for i in plan.images],
        metrics=plan.metrics,
        notes=list(plan.notes),
    )
    hasher = ModelHasher()
    for variant in plan.variants:  # every model located (and hashed) before any work: exit 3 early
        results.models[variant.name] = [] if variant.bicubic else hasher.model_files(variant.config)
    results.info["device"] = _device_description(plan.device)
    suite = MetricSuite.build(
        plan.metrics, border=plan.scale, device=plan.device, allow_download=plan.allow_download, loader=metric_loader
    )
    results.unavailable = dict(suite.unavailable)
    for problem in suite.unavailable.values():
        events.metric_unavailable(problem)
    n = len(plan.images)
    events.started((n if plan.mode == "degrade" else 0) + 2 * n * len(plan.variants))
    images = list(plan.images)
    records: dict[str, FolderRecord] = {}
    try:
        if plan.mode == "degrade":
            images = _make_inputs(plan, images, results, events)
        results.info["files"] = {str(i.name): {"hr": _path(i.hr), "lr": _path(i.lr)} for i in images}
        for variant in plan.variants:
            records[variant.name] = _make_outputs(plan, variant, images, results, events)
            if results.interrupted or (plan.fail_fast and results.failures()):
                break
        if not results.interrupted and not (plan.fail_fast and results.failures()):
            from cassr_cli.evaluation.scoring import score_all

            try:
                score_all(plan, images, suite, results, events, records)
            finally:  # keep the scores made so far, even after Ctrl-C
                for name, record in records.items():
                    write_record(plan.out / name, record)
    except KeyboardInterrupt:
        results.interrupted = True
    if not results.interrupted:
        from cassr_cli.evaluation.report import write_reports

        events.phase("writing reports")
        write_reports(results)
    return results


def _make_inputs(plan: EvalPlan, images: list[EvalImage], results: EvalResults, events: EvalEvents) -> list[EvalImage]:
    """Write the synthetic LR inputs (``--degrade``); images whose HR cannot be read are left out."""
    from cassr_cli.evaluation.degrade import synthesise_lr
    from cassr_cli.evaluation.pictures import mod_crop, read_picture
    from cassr_cli.io.image import encode_image, write_atomic

    folder = plan.out / LR_FOLDER
    recipe = {"inputs": plan.input_recipe(), "hr": str(Path(plan.sources["hr"] or "").expanduser().resolve())}
    record = open_folder(folder, recipe, what="LR inputs", overwrite=plan.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder, record)
    events.phase(f"making LR inputs ({plan.degrade})")
    out: list[EvalImage] = []
    for image in images:
        target = folder.joinpath(*image.name.with_suffix(".png").parts)
        if not (target.exists() and not plan.overwrite):
            try:
                assert image.hr is not None
                hr = mod_crop(read_picture(image.hr, max_pixels=plan.max_pixels), plan.scale)
                lr = synthesise_lr(hr, method=plan.degrade or "bicubic", scale=plan.scale, seed=plan.seed, key=str(image.name))
                data = encode_image(
                    (lr / 255.0).astype("float32"), None, fmt="png", bit_depth=8, is_gray=hr.is_gray,
                    quality=100, icc_profile=None, exif=None,
                )
                write_atomic(target, data)
            except Exception as err:  # per image: record and go on
                results.input_failures[str(image.name)] = _describe_error(err, image.hr)
                logger.debug("cannot make the LR input of %s", image.name, exc_info=True)
                events.advance()
                if plan.fail_fast:
                    break
                continue
        out.append(image.with_lr(target))
        events.advance()
    return out


def _make_outputs(
    plan: EvalPlan, variant: Variant, images: list[EvalImage], results: EvalResults, events: EvalEvents
) -> FolderRecord:
    """One runner batch: ``variant``'s output for every image, into ``OUT/<variant>/``; returns the
    folder's record (recipe, per-image stats)."""
    folder = plan.out / variant.name
    recipe = {
        "options": variant.options(),
        "models": [m["sha256"] for m in results.models.get(variant.name, [])],
        "inputs": plan.input_recipe(),
    }
    record = open_folder(folder, recipe, what=f"outputs of variant {variant.name!r}", overwrite=plan.overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    write_record(folder, record)
    by_output: dict[str, EvalImage] = {}
    outputs = []
    for image in images:
        assert image.lr is not None
        target = folder.joinpath(*image.name.with_suffix(".png").parts)
        by_output[str(target)] = image
        item = InputItem(path=image.lr, relative=image.name, source="eval")
        outputs.append(PlannedOutput(item=item, output=target, fmt="png"))
    events.phase(f"variant {variant.name}")
    config = replace(variant.config, overwrite=plan.overwrite, fail_fast=plan.fail_fast, max_pixels=plan.max_pixels)
    batch = BatchPlan(outputs=outputs, notes=[], dest=folder)
    factory = bicubic_factory if variant.bicubic else None
    try:
        summary = run_batch(batch, config, events=events.batch_events(variant.name), pipeline_factory=factory)
    finally:
        write_record(folder, record)
    planned_by_input = {str(p.item.path): p for p in outputs}
    for result in summary.results:
        planned = planned_by_input[result.input]
        image = by_output[str(planned.output)]
        name = str(image.name)
        outcome = Outcome(result.status, result.input, result.output, result.seconds, dict(result.stats), result.error)
        if result.status == "ok":
            record.images[name] = {"seconds": result.seconds, "stats": result.stats}  # new output: no scores yet
        elif result.status == "skipped":
            stored = record.images.get(name, {})
            outcome.seconds = stored.get("seconds")
            outcome.stats = dict(stored.get("stats", {}))
            outcome.error = None
        results.outcomes[(variant.name, name)] = outcome
    write_record(folder, record)
    if summary.interrupted:
        results.interrupted = True
    return record


def _describe(plan: EvalPlan) -> dict[str, Any]:
    return {
        "cassr_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": plan.mode,
        "scale": plan.scale,
        "sources": dict(plan.sources),
        "degrade": plan.degrade,
        "seed": plan.seed if plan.mode == "degrade" else None,
        "crop": plan.crop.to_json() if plan.crop else "auto",
    }


def _device_description(device: str) -> str:
    """The device (``--device``) with the GPU's name (raises DeviceUnavailableError, exit 3)."""
    from cassr_cli.runtime.device import select_runtime

    runtime = select_runtime(device, "auto")
    if runtime.device.type == "cuda":
        import torch

        return f"{runtime.device} ({torch.cuda.get_device_name(runtime.device)})"
    return str(runtime.device)


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _describe_error(err: BaseException, path: Path | None) -> str:
    from cassr_cli.errors import ImageError

    if isinstance(err, ImageError):
        message = err.message.removeprefix(f"{path}: ") if path is not None else err.message
        return f"{message} ({err.hint})" if err.hint else message
    return f"{type(err).__name__}: {err}"


__all__ = ["EvalEvents", "FolderRecord", "run_evaluation"]
