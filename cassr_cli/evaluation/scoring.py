"""Scoring every output, one image at a time: the reference is read once, each variant's output is read,
checked for size, scored with the run's metrics, and cut to the report's crop.

Scores are kept in the variant folder's ``eval.json`` with a fingerprint of what they were computed
from (the output file's size and modification time, the reference's, the border, the cassr version). A
re-run with the same fingerprint reuses them and reads the output only for metrics not computed before
(or a crop that is missing), so adding a variant to an evaluation does not re-score the others.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from cassr_cli._version import __version__
from cassr_cli.evaluation.pictures import Picture, mod_crop, read_picture
from cassr_cli.evaluation.report.crops import Crop, crop_side, detail_crop, fit_crop

if TYPE_CHECKING:
    from cassr_cli.evaluation.metrics.suite import MetricSuite
    from cassr_cli.evaluation.pairing import EvalImage
    from cassr_cli.evaluation.plan import EvalPlan
    from cassr_cli.evaluation.provenance import FolderRecord
    from cassr_cli.evaluation.results import EvalResults
    from cassr_cli.evaluation.session import EvalEvents

logger = logging.getLogger(__name__)

CROPS_FOLDER = "report"
SCORE_SCHEMA = 1
"""Bumped when a metric's computation changes, so cached scores are recomputed."""
REFERENCE_LABEL = "_reference"
"""File stem of the reference crop (variant names start with a letter or digit, so never clash)."""


def crop_file(out: Path, image: str, label: str) -> Path:
    """Where the crop of ``image`` for ``label`` (a variant, or :data:`REFERENCE_LABEL`) is written."""
    stem = PurePosixPath(image).with_suffix("")
    return out.joinpath(CROPS_FOLDER, *stem.parts, f"{label}.png")


def score_all(
    plan: EvalPlan,
    images: list[EvalImage],
    suite: MetricSuite,
    results: EvalResults,
    events: EvalEvents,
    records: dict[str, FolderRecord] | None = None,
) -> None:
    """Score every (variant, image) that has an output; fill ``results`` and emit one record each.

    ``records`` (variant → its folder record) hold cached scores; they are updated in place."""
    records = records or {}
    wanted = suite.wanted(with_reference=plan.with_reference)
    events.phase("scoring")
    problems: Counter[tuple[str, str]] = Counter()
    for image in images:
        name = str(image.name)
        try:
            reference = _reference(plan, image)
        except Exception as err:
            results.input_failures[name] = _error_text(err)
            logger.debug("cannot read the reference of %s", name, exc_info=True)
            for _ in plan.variants:
                events.advance()
            continue
        scale = 1 if plan.with_reference else plan.scale  # without HR, the reference is the input
        size = (reference.height * scale, reference.width * scale)
        results.reference[name], _ = suite.score(reference, None)
        crop = _choose_crop(plan.crop, reference, scale)
        results.crops[name] = crop
        _save_crop(crop_file(plan.out, name, REFERENCE_LABEL), crop.divided(scale), reference, enlarge=scale)
        for variant in plan.variants:
            outcome = results.outcome(variant.name, name)
            if outcome is None:
                events.advance()
                continue
            if outcome.status != "failed":
                try:
                    values, missing = _score_output(
                        plan, suite, wanted, image, outcome.output or "", reference, size, crop,
                        records.get(variant.name), variant.name,
                    )
                    outcome.metrics, outcome.problems = values, missing
                    for key, why in missing.items():
                        problems[(key, why)] += 1
                except Exception as err:  # per image: the output cannot be scored
                    outcome.status = "failed"
                    outcome.error = f"cannot score the output: {_error_text(err)}"
                    logger.debug("scoring %s / %s failed", variant.name, name, exc_info=True)
            events.record(outcome.record(variant.name, name))
            events.advance()
    for (key, why), count in sorted(problems.items()):
        results.notes.append(f"{key}: no value for {count} output(s): {why}")


def _score_output(
    plan: EvalPlan,
    suite: MetricSuite,
    wanted: tuple[str, ...],
    image: EvalImage,
    output_path: str,
    reference: Picture,
    size: tuple[int, int],
    crop: Crop,
    record: FolderRecord | None,
    label: str,
) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics of one output (cached ones reused) and its crop written; ``(values, problems)``."""
    output_file = Path(output_path)
    reference_file = image.hr if plan.with_reference else image.lr
    assert reference_file is not None
    fingerprint = _fingerprint(output_file, reference_file, plan.scale)
    entry = record.images.setdefault(str(image.name), {}) if record is not None else {}
    cached = entry.get("scores") or {}
    if cached.get("fingerprint") != fingerprint:
        cached = {"fingerprint": fingerprint, "metrics": {}, "problems": {}}
    values: dict[str, float] = dict(cached["metrics"])
    problems: dict[str, str] = dict(cached["problems"])
    todo = [k for k in wanted if k not in values and k not in problems]
    target = crop_file(plan.out, str(image.name), label)
    need_crop = cached.get("crop") != crop.to_json() or not target.is_file()
    if todo or need_crop:
        output = read_picture(output_file, max_pixels=plan.max_pixels)
        if (output.height, output.width) != size:
            raise ValueError(
                f"output is {output.width}x{output.height}, expected {size[1]}x{size[0]} "
                "(an earlier run with another scale? use --overwrite)"
            )
        if todo:
            new_values, new_problems = suite.score(output, reference if plan.with_reference else None, only=todo)
            values.update(new_values)
            problems.update(new_problems)
        if need_crop:
            _save_crop(target, crop, output)
    entry["scores"] = {"fingerprint": fingerprint, "metrics": values, "problems": problems, "crop": crop.to_json()}
    return {k: values[k] for k in wanted if k in values}, {k: problems[k] for k in wanted if k in problems}


def _fingerprint(output: Path, reference: Path, scale: int) -> dict[str, object]:
    out_stat, ref_stat = output.stat(), reference.stat()
    return {
        "output": [out_stat.st_size, out_stat.st_mtime_ns],
        "reference": [str(reference.resolve()), ref_stat.st_size, ref_stat.st_mtime_ns],
        "scale": scale,
        "cassr": __version__,
        "schema": SCORE_SCHEMA,
    }


def _reference(plan: EvalPlan, image: EvalImage) -> Picture:
    if plan.with_reference:
        assert image.hr is not None
        return mod_crop(read_picture(image.hr, max_pixels=plan.max_pixels), plan.scale)
    assert image.lr is not None
    return read_picture(image.lr, max_pixels=plan.max_pixels)


def _choose_crop(given: Crop | None, reference: Picture, scale: int) -> Crop:
    """The crop in output pixels: ``given`` fitted into the image, or the most detailed region of the
    reference (for an input shown ×``scale``, on a grid of the scale so it maps onto input pixels)."""
    height, width = reference.height * scale, reference.width * scale
    if given is not None:
        return fit_crop(given, height, width, multiple=scale)
    side = max(1, crop_side(height, width) // scale)
    return detail_crop(reference.levels, side=side).scaled(scale)


def _save_crop(path: Path, crop: Crop, picture: Picture, *, enlarge: int = 1) -> None:
    """Write ``crop`` of ``picture`` as an 8-bit PNG, enlarged by pixel repetition."""
    from cassr_cli.io.image import encode_image, write_atomic

    part = crop.cut(picture.levels)
    if enlarge > 1:
        part = part.repeat(enlarge, axis=0).repeat(enlarge, axis=1)
    data = encode_image(
        np.clip(part / 255.0, 0.0, 1.0).astype(np.float32), None, fmt="png", bit_depth=8,
        is_gray=picture.is_gray, quality=100, icc_profile=None, exif=None,
    )
    write_atomic(path, data)


def _error_text(err: BaseException) -> str:
    from cassr_cli.errors import ImageError

    if isinstance(err, ImageError):
        return f"{err.message} ({err.hint})" if err.hint else err.message
    return f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
