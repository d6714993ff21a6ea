"""The results of an evaluation: per (variant, image) outcomes, means, and the summary rows. Torch-free."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cassr_cli.errors import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK
from cassr_cli.evaluation.metrics.specs import METRICS, Unavailable
from cassr_cli.evaluation.report.crops import Crop
from cassr_cli.evaluation.variants import Variant

Status = Literal["ok", "skipped", "failed"]


@dataclass
class Outcome:
    """One (variant, image): how its output came about and how it scored.

    Attributes:
        status: ``ok`` (made now), ``skipped`` (an earlier run's output, reused) or ``failed``.
        input: the LR file.
        output: the output file (None when failed).
        seconds, stats: what the producing run recorded (also for reused outputs, when known).
        error: why it failed.
        metrics: metric → value.
        problems: metric → why this image has no value for it.
    """

    status: Status
    input: str
    output: str | None
    seconds: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def record(self, variant: str, image: str) -> dict[str, Any]:
        """The ``--json`` line: ``cassr upscale``'s record plus the variant, the image and its metrics."""
        return {
            "variant": variant,
            "image": image,
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "error": self.error,
            "stats": self.stats,
            "metrics": {k: finite_or_none(v) for k, v in self.metrics.items()},
        }

    @property
    def unet_calls(self) -> int:
        return int(self.stats.get("denoise", {}).get("unet_calls", 0)) if self.stats else 0

    @property
    def peak_memory_bytes(self) -> int:
        """The largest device peak any stage recorded (0 on the CPU)."""
        peaks = [v.get("peak_memory_bytes", 0) for v in self.stats.values() if isinstance(v, dict)]
        return int(max(peaks, default=0))


@dataclass
class EvalResults:
    """Everything an evaluation found; the reports are written from this.

    Attributes:
        out: the output folder.
        info: the run's description (mode, scale, sources, seed, degrade, device, version …).
        variants: the variants, in report order.
        images: the image names, in order.
        metrics: the metrics asked for, in report order.
        unavailable: the metrics that could not run.
        outcomes: ``(variant, image) →`` :class:`Outcome`.
        models: variant → its model files (``role``, ``file``, ``sha256``).
        reference: image → no-reference metrics of the HR image (or of the input without a reference).
        input_failures: image → why it could not be evaluated at all (e.g. an unreadable HR).
        crops: image → the region shown in the report (output pixels).
        notes: things the user should know (one line each).
        interrupted: the run was stopped with Ctrl-C.
    """

    out: Path
    info: dict[str, Any]
    variants: list[Variant]
    images: list[str]
    metrics: tuple[str, ...]
    unavailable: dict[str, Unavailable] = field(default_factory=dict)
    outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)
    models: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    reference: dict[str, dict[str, float]] = field(default_factory=dict)
    input_failures: dict[str, str] = field(default_factory=dict)
    crops: dict[str, Crop] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(k for k in self.metrics if k not in self.unavailable)

    def outcome(self, variant: str, image: str) -> Outcome | None:
        return self.outcomes.get((variant, image))

    def variant_outcomes(self, variant: str) -> list[tuple[str, Outcome]]:
        return [(i, o) for i in self.images if (o := self.outcomes.get((variant, i))) is not None]

    def mean(self, variant: str) -> dict[str, float]:
        """Mean of each available metric over the images that have a value for it."""
        out: dict[str, float] = {}
        for key in self.available:
            values = [o.metrics[key] for _, o in self.variant_outcomes(variant) if key in o.metrics]
            if values:
                out[key] = _mean(values)
        return out

    def reference_mean(self) -> dict[str, float]:
        keys = {k for values in self.reference.values() for k in values}
        return {k: _mean([v[k] for v in self.reference.values() if k in v]) for k in self.available if k in keys}

    def run_stats(self, variant: str) -> dict[str, Any]:
        """Per-image means of what the runs recorded: seconds, UNet calls, peak device memory."""
        done = [o for _, o in self.variant_outcomes(variant) if o.status != "failed"]
        timed = [o for o in done if o.seconds is not None]
        return {
            "images": len(done),
            "failed": sum(1 for _, o in self.variant_outcomes(variant) if o.status == "failed"),
            "seconds_per_image": _mean([o.seconds for o in timed]) if timed else None,  # type: ignore[misc]
            "unet_calls_per_image": _mean([o.unet_calls for o in timed]) if timed else None,
            "peak_memory_bytes": max((o.peak_memory_bytes for o in timed), default=None) if timed else None,
        }

    def failures(self) -> list[tuple[str, str, str]]:
        """``(variant or "", image, error)`` of everything that failed."""
        out = [("", name, error) for name, error in self.input_failures.items()]
        for (variant, image), o in self.outcomes.items():
            if o.status == "failed":
                out.append((variant, image, o.error or ""))
        return out

    @property
    def exit_code(self) -> int:
        """0 all done, 1 something failed, 130 interrupted (as ``cassr upscale``)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.failures() else EXIT_OK


@dataclass(frozen=True)
class SummaryRow:
    """One variant in the summary table: metric means and run stats, with the best per column."""

    variant: str
    values: dict[str, float | None]
    best: frozenset[str]


SUMMARY_STATS: tuple[tuple[str, str], ...] = (
    ("seconds_per_image", "s/image"),
    ("unet_calls_per_image", "UNet calls"),
    ("peak_memory_bytes", "peak mem"),
)
"""Run-stat columns of the summary (key, title); lower is better for each."""


def summary_rows(results: EvalResults) -> list[SummaryRow]:
    """The summary table: one row per variant; ``best`` names the columns where it is the best (ties
    included; a column whose values are all equal marks nobody)."""
    rows: list[tuple[str, dict[str, float | None]]] = []
    for variant in results.variants:
        values: dict[str, float | None] = dict(results.mean(variant.name))
        stats = results.run_stats(variant.name)
        for key, _title in SUMMARY_STATS:
            values[key] = stats[key]
        rows.append((variant.name, values))
    best: dict[str, set[str]] = {name: set() for name, _ in rows}
    columns = [(k, METRICS[k].higher_is_better) for k in results.available] + [(k, False) for k, _ in SUMMARY_STATS]
    for key, higher in columns:
        present = [(name, v[key]) for name, v in rows if v.get(key) is not None and math.isfinite(v[key] or 0.0)]
        if len(present) < 2 or len({value for _, value in present}) == 1:
            continue
        target = max(value for _, value in present) if higher else min(value for _, value in present)
        for name, value in present:
            if value == target:
                best[name].add(key)
    return [SummaryRow(name, values, frozenset(best[name])) for name, values in rows]


def finite_or_none(value: float | None) -> float | None:
    """JSON has no infinity (PSNR of identical images): such values are written as null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def format_value(key: str, value: float | None) -> str:
    """A table cell: metric values with the metric's decimals, run stats in their units."""
    if value is None:
        return "–"
    if key in METRICS:
        return "inf" if math.isinf(value) else f"{value:.{METRICS[key].digits}f}"
    if key == "seconds_per_image":
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    if key == "unet_calls_per_image":
        return f"{value:.1f}" if value != int(value) else str(int(value))
    if key == "peak_memory_bytes":
        return "–" if value <= 0 else f"{value / 2**30:.2f} GiB"
    return str(value)
