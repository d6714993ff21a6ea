"""The metrics ``cassr eval`` knows: their keys, labels, direction and kind. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cassr_cli.evaluation.metrics.learned import WeightFile


@dataclass(frozen=True)
class MetricSpec:
    """One metric.

    Attributes:
        key: the name in ``metrics.json``/``metrics.csv`` and ``--metrics``.
        label: the column title.
        reference: needs the HR image (full-reference) rather than the output alone.
        higher_is_better: the direction of "better".
        digits: decimals shown in tables.
        source: what computes it (``cassr`` for the built-in ones, ``pyiqa`` for learned ones).
    """

    key: str
    label: str
    reference: bool
    higher_is_better: bool
    digits: int
    source: str

    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": "full-reference" if self.reference else "no-reference",
            "better": "higher" if self.higher_is_better else "lower",
            "source": self.source,
        }


METRICS: dict[str, MetricSpec] = {
    spec.key: spec
    for spec in (
        MetricSpec("psnr_y", "PSNR-Y", True, True, 2, "cassr"),
        MetricSpec("ssim_y", "SSIM-Y", True, True, 4, "cassr"),
        MetricSpec("psnr_rgb", "PSNR-RGB", True, True, 2, "cassr"),
        MetricSpec("lpips", "LPIPS", True, False, 4, "pyiqa"),
        MetricSpec("dists", "DISTS", True, False, 4, "pyiqa"),
        MetricSpec("niqe", "NIQE", False, False, 3, "cassr"),
        MetricSpec("musiq", "MUSIQ", False, True, 2, "pyiqa"),
        MetricSpec("maniqa", "MANIQA", False, True, 4, "pyiqa"),
        MetricSpec("clipiqa", "CLIPIQA", False, True, 4, "pyiqa"),
    )
}
"""Every metric, in report order (full-reference first)."""


@dataclass(frozen=True)
class Unavailable:
    """Why a metric cannot run here, and how to make it run.

    Attributes:
        key: the metric.
        reason: one line, e.g. ``"weights not downloaded: DISTS_weights-f5e65c96.pth"``.
        hint: one line: the command or step that fixes it.
        files: for missing weights, every file the metric needs (URL, cache path, present or not).
    """

    key: str
    reason: str
    hint: str
    files: tuple[WeightFile, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"available": False, "reason": self.reason, "hint": self.hint}
        if self.files:
            out["files"] = [f.to_json() for f in self.files]
        return out
