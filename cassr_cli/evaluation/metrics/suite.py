"""The metrics of one evaluation, built once and applied to every (output, reference) pair.

PSNR/SSIM/NIQE are always available (numpy + OpenCV, shipped NIQE model). Learned metrics come from
:mod:`~cassr_cli.evaluation.metrics.learned` and may be :class:`Unavailable`; they are loaded once per
run, not per image or per variant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cassr_cli.errors import UsageError
from cassr_cli.evaluation.metrics.specs import METRICS, Unavailable

if TYPE_CHECKING:
    import torch

    from cassr_cli.evaluation.metrics.learned import ScoreFn
    from cassr_cli.evaluation.pictures import Picture

logger = logging.getLogger(__name__)

BUILT_IN = ("psnr_y", "ssim_y", "psnr_rgb", "niqe")

LearnedLoader = Callable[[str, "torch.device", bool], "ScoreFn | Unavailable"]
"""``loader(key, device, allow_download)``: builds a learned metric (default: pyiqa)."""


def parse_metric_keys(text: str | None, *, with_reference: bool) -> tuple[str, ...]:
    """The metrics asked for by ``--metrics`` (comma-separated keys, or ``all``), in report order.

    Without a reference (``--no-reference``) ``all`` means the no-reference metrics.

    Raises:
        UsageError: an unknown key, or a full-reference metric without a reference.
    """
    if text is None or text.strip() in ("", "all"):
        return tuple(k for k, s in METRICS.items() if with_reference or not s.reference)
    asked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [k for k in asked if k not in METRICS]
    if unknown:
        raise UsageError(
            f"unknown metric(s) in --metrics: {', '.join(unknown)}", hint=f"choose from: all, {', '.join(METRICS)}"
        )
    if not with_reference:
        needs_hr = [k for k in asked if METRICS[k].reference]
        if needs_hr:
            raise UsageError(f"{', '.join(needs_hr)} need(s) a reference image, which --no-reference has none of")
    return tuple(k for k in METRICS if k in asked)


@dataclass
class MetricSuite:
    """The metrics of one run.

    Attributes:
        keys: the metrics asked for, in report order (available or not).
        border: pixels cropped from each side for PSNR/SSIM (the scale).
        learned: the loaded learned metrics.
        unavailable: the metrics that cannot run, with the reason.
        device: where learned metrics run (None when none is loaded).
    """

    keys: tuple[str, ...]
    border: int
    learned: dict[str, ScoreFn] = field(default_factory=dict)
    unavailable: dict[str, Unavailable] = field(default_factory=dict)
    device: torch.device | None = None

    @classmethod
    def build(
        cls,
        keys: Sequence[str],
        *,
        border: int,
        device: str = "auto",
        allow_download: bool = False,
        loader: LearnedLoader | None = None,
    ) -> MetricSuite:
        """Check and load every requested metric once. Learned metrics that cannot run are recorded
        as unavailable; nothing here raises for a missing package or weight file."""
        suite = cls(tuple(keys), border)
        wanted = [k for k in keys if k not in BUILT_IN]
        if not wanted:
            return suite
        from cassr_cli.evaluation.metrics import learned as learned_module

        load = loader or (lambda key, dev, dl: learned_module.load(key, dev, allow_download=dl))
        torch_device = _metric_device(device)
        for key in wanted:
            outcome = load(key, torch_device, allow_download)
            if isinstance(outcome, Unavailable):
                suite.unavailable[key] = outcome
            else:
                suite.learned[key] = outcome
                suite.device = torch_device
        return suite

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(k for k in self.keys if k not in self.unavailable)

    def wanted(self, *, with_reference: bool) -> tuple[str, ...]:
        """The available metrics that apply with (or without) a reference image."""
        return tuple(k for k in self.available if with_reference or not METRICS[k].reference)

    def score(
        self, sr: Picture, hr: Picture | None, *, only: Sequence[str] | None = None
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Every available metric of ``sr`` (against ``hr`` for full-reference ones; ``hr`` None scores
        the no-reference metrics only), or just those in ``only``.

        Returns:
            ``(values, problems)``: metric → value, and metric → why it has no value for this image
            (e.g. too small for NIQE's 96-pixel blocks).
        """
        from cassr_cli.evaluation.metrics.full_reference import full_reference_scores
        from cassr_cli.evaluation.metrics.niqe import niqe

        values: dict[str, float] = {}
        problems: dict[str, str] = {}
        keys = [k for k in self.wanted(with_reference=hr is not None) if only is None or k in only]
        if hr is not None and any(k in keys for k in ("psnr_y", "ssim_y", "psnr_rgb")):
            try:
                fr = full_reference_scores(sr.for_full_reference(hr), hr.for_full_reference(sr), border=self.border)
                values.update({k: v for k, v in fr.items() if k in keys})
            except ValueError as err:
                problems.update({k: str(err) for k in ("psnr_y", "ssim_y", "psnr_rgb") if k in keys})
        if "niqe" in keys:
            try:
                values["niqe"] = niqe(sr.levels)
            except ValueError as err:
                problems["niqe"] = str(err)
        learned = [k for k in keys if k in self.learned]
        if learned:
            assert self.device is not None
            sr_t = sr.tensor(self.device)
            hr_t = hr.tensor(self.device) if hr is not None else None
            for key in learned:
                try:
                    values[key] = self.learned[key](sr_t, hr_t if METRICS[key].reference else None)
                except Exception as err:  # a learned model failing on one image does not stop the run
                    logger.debug("%s failed", key, exc_info=True)
                    problems[key] = f"{type(err).__name__}: {err}"
        return values, problems


def _metric_device(name: str) -> torch.device:
    """Learned metrics run in fp32 on ``--device`` (auto: CUDA when available)."""
    from cassr_cli.runtime.device import select_runtime

    return select_runtime(name, "fp32").device
