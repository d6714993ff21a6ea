"""``metrics.json`` and ``metrics.csv``: the machine-readable results. Torch-free."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from cassr_cli.evaluation.metrics.specs import METRICS
from cassr_cli.evaluation.results import EvalResults, finite_or_none
from cassr_cli.io.atomic import write_atomic

JSON_NAME = "metrics.json"
CSV_NAME = "metrics.csv"


def metrics_document(results: EvalResults) -> dict[str, Any]:
    """The content of ``metrics.json``::

        {"cassr_version", "created", "device", "mode", "scale", "sources", "degrade", "seed", "crop",
         "metrics": {KEY: {label, kind, better, source, available[, reason, hint, files]}},
         "reference": {"label", "mean": {...}, "images": {IMAGE: {...}}},   # no-reference metrics
         "variants": {NAME: {"options", "args", "models": [{role, file, sha256}],
                             "mean": {KEY: value}, "images": {IMAGE: {KEY: value}},
                             "runs": {IMAGE: {status, output, seconds, unet_calls, peak_memory_bytes, error}},
                             "summary": {images, failed, seconds_per_image, unet_calls_per_image,
                                         peak_memory_bytes}}},
         "failures": [{"variant", "image", "error"}], "notes": [...]}

    Metric values are floats; a value that is not finite (PSNR of identical images) is null.
    """
    doc: dict[str, Any] = dict(results.info)
    doc["metrics"] = {}
    for key in results.metrics:
        entry = METRICS[key].to_json()
        problem = results.unavailable.get(key)
        entry.update(problem.to_json() if problem else {"available": True})
        doc["metrics"][key] = entry
    doc["reference"] = {
        "label": "HR" if results.info.get("mode") != "no-reference" else "input",
        "mean": _values(results.reference_mean()),
        "images": {image: _values(values) for image, values in results.reference.items()},
    }
    doc["variants"] = {}
    for variant in results.variants:
        outcomes = results.variant_outcomes(variant.name)
        doc["variants"][variant.name] = {
            "options": variant.options(),
            "args": variant.args(),
            "models": results.models.get(variant.name, []),
            "mean": _values(results.mean(variant.name)),
            "images": {image: _values(o.metrics) for image, o in outcomes if o.status != "failed"},
            "runs": {
                image: {
                    "status": o.status,
                    "output": o.output,
                    "seconds": o.seconds,
                    "unet_calls": o.unet_calls,
                    "peak_memory_bytes": o.peak_memory_bytes,
                    "error": o.error,
                }
                for image, o in outcomes
            },
            "summary": results.run_stats(variant.name),
        }
    doc["failures"] = [{"variant": v or None, "image": i, "error": e} for v, i, e in results.failures()]
    doc["notes"] = list(results.notes)
    return doc


def write_json(results: EvalResults) -> None:
    text = json.dumps(metrics_document(results), indent=1, ensure_ascii=False, allow_nan=False, default=str)
    write_atomic(results.out / JSON_NAME, (text + "\n").encode("utf-8"))


def csv_rows(results: EvalResults) -> list[list[str]]:
    """Header and one row per (variant, image): status, run stats, every metric asked for, error."""
    keys = list(results.metrics)
    rows = [["variant", "image", "status", "seconds", "unet_calls", "peak_memory_bytes", *keys, "error"]]
    for variant in results.variants:
        for image, o in results.variant_outcomes(variant.name):
            values = [_cell(finite_or_none(o.metrics.get(k))) for k in keys]
            seconds = "" if o.seconds is None else f"{o.seconds:.4f}"
            rows.append(
                [variant.name, image, o.status, seconds, str(o.unet_calls), str(o.peak_memory_bytes), *values, o.error or ""]
            )
    return rows


def write_csv(results: EvalResults) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(csv_rows(results))
    write_atomic(results.out / CSV_NAME, buffer.getvalue().encode("utf-8"))


def _values(values: dict[str, float]) -> dict[str, float | None]:
    return {k: finite_or_none(v) for k, v in values.items()}


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))
