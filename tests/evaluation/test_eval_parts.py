"""The parts of an evaluation: variants and their configuration, the summary's best marks, crops, the
progress accounting over the whole evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_support import make_pairs, write_identity_model

from cassr_cli.errors import UsageError
from cassr_cli.evaluation.metrics.specs import Unavailable
from cassr_cli.evaluation.plan import EvalPlan, plan_images
from cassr_cli.evaluation.report.crops import Crop, detail_crop, fit_crop, parse_crop
from cassr_cli.evaluation.results import EvalResults, Outcome, format_value, summary_rows
from cassr_cli.evaluation.session import run_evaluation
from cassr_cli.evaluation.variants import build_variants, split_variant

# --- variants --------------------------------------------------------------------------------------------


def test_variants_in_order_with_shared_options_and_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('color_fix = "adain"\nsteps = 7\n')
    base, variants = build_variants(
        {"activation_tile_size": 64, "steps": None},
        [("fast", {"steps": 3, "guidance_mode": "cached"})],
        config_file=config,
        env={"CASSR_STRENGTH": "0.3", "CASSR_STEPS": "9"},
    )
    assert [v.name for v in variants] == ["bicubic", "stage1", "cassr", "fast"]
    by = {v.name: v for v in variants}
    assert by["bicubic"].bicubic and not by["cassr"].bicubic
    # flags > env > file > defaults, for every variant; the variant's own flags on top
    assert base.steps == 9 and by["cassr"].config.steps == 9 and by["stage1"].config.steps == 0
    assert by["fast"].config.steps == 3 and by["fast"].config.guidance_mode == "cached"
    assert all(v.config.strength == 0.3 and v.config.color_fix == "adain" for v in variants)
    assert all(v.config.activation_tile_size == 64 and v.config.format == "png" for v in variants)
    assert by["fast"].args() == "--steps 3 --guidance-mode cached"
    assert "device" not in by["fast"].options() and by["fast"].options()["steps"] == 3
    _, only = build_variants({}, [("fast", {"steps": 3})], only=["FAST", "bicubic"], env={})
    assert [v.name for v in only] == ["bicubic", "fast"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("noequals", "is not NAME="), ("bad name=--steps 1", "bad variant name"), ("cassr=--steps 1", "reserved"), ("Report=", "reserved"), ("metrics.json=", "reserved")],
)
def test_variant_names(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        split_variant(text)
    assert split_variant("a.b_c-1=--steps 2 --prompt 'x y'") == ("a.b_c-1", "--steps 2 --prompt 'x y'")


# --- summary and formatting ---------------------------------------------------------------------------


def _results(means: dict[str, dict[str, float]], seconds: dict[str, float]) -> EvalResults:
    variants = [v for v in build_variants({}, [(n, {"steps": 1}) for n in means if n not in ("bicubic", "stage1", "cassr")], env={})[1] if v.name in means]
    results = EvalResults(Path("."), {}, variants, ["a"], ("psnr_y", "niqe", "lpips"))
    results.unavailable["lpips"] = Unavailable("lpips", "r", "h")
    for name, values in means.items():
        results.outcomes[(name, "a")] = Outcome("ok", "in", "out", seconds[name], {"denoise": {"unet_calls": 2}}, metrics=values)
    return results


def test_summary_marks_the_best_per_column_in_its_direction() -> None:
    results = _results(
        {"bicubic": {"psnr_y": 28.0, "niqe": 7.0}, "stage1": {"psnr_y": 27.0, "niqe": 4.0}, "cassr": {"psnr_y": 28.0, "niqe": 5.0}},
        {"bicubic": 0.1, "stage1": 0.5, "cassr": 3.0},
    )
    rows = {row.variant: row for row in summary_rows(results)}
    assert rows["bicubic"].best == {"psnr_y", "seconds_per_image"}  # tie on PSNR: both marked
    assert rows["cassr"].best == {"psnr_y"}
    assert rows["stage1"].best == {"niqe"}  # lower NIQE is better
    assert "lpips" not in rows["cassr"].values  # unavailable: no column
    assert all("unet_calls_per_image" not in row.best for row in rows.values())  # all equal: nobody
    assert format_value("psnr_y", 28.123) == "28.12" and format_value("ssim_y", 0.81234) == "0.8123"
    assert format_value("peak_memory_bytes", 0) == "–" and format_value("peak_memory_bytes", 3 * 2**30) == "3.00 GiB"
    assert format_value("niqe", None) == "–"


# --- crops ------------------------------------------------------------------------------------------------


def test_detail_crop_finds_the_textured_region_and_crops_fit() -> None:
    image = np.full((200, 300, 3), 128.0)
    image[120:180, 200:280] = np.random.default_rng(0).integers(0, 256, (60, 80, 3))
    crop = detail_crop(image)
    assert crop.w == crop.h == 50  # a quarter of the shorter side
    assert 120 - 50 < crop.y <= 180 and 200 - 50 < crop.x <= 280
    assert detail_crop(image, multiple=4).x % 4 == 0
    assert fit_crop(Crop(290, 190, 64, 64), 200, 300) == Crop(236, 136, 64, 64)
    assert fit_crop(Crop(0, 0, 500, 500), 200, 300) == Crop(0, 0, 300, 200)
    assert fit_crop(Crop(5, 7, 30, 30), 200, 300, multiple=4) == Crop(4, 4, 28, 28)
    assert parse_crop(" 1, 2 ,3,4") == Crop(1, 2, 3, 4)
    for bad in ("1,2,3", "a,b,c,d", "1,2,0,4", "-1,2,3,4"):
        with pytest.raises(UsageError):
            parse_crop(bad)


# --- progress accounting ----------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.total = 0
        self.advanced = 0
        self.records: list[dict[str, Any]] = []
        self.phases: list[str] = []

    def note(self, message: str) -> None:
        pass

    def metric_unavailable(self, problem: Unavailable) -> None:
        pass

    def started(self, total: int) -> None:
        self.total = total

    def phase(self, text: str) -> None:
        self.phases.append(text)

    def advance(self) -> None:
        self.advanced += 1

    def batch_events(self, variant: str) -> Recorder:
        return self

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def batch_started(self, total: int) -> None:
        pass

    def image_started(self, index: int, planned: object) -> None:
        pass

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        pass

    def image_finished(self, result: object) -> None:
        self.advance()


@pytest.mark.parametrize("mode", ["paired", "degrade"])
def test_the_progress_bar_covers_the_whole_evaluation(tmp_path: Path, mode: str) -> None:
    data = make_pairs(tmp_path / "data", [(96, 96), (100, 96)])
    model = write_identity_model(tmp_path / "m.pth")
    _, variants = build_variants({"activation": str(model), "steps": 0}, [], only=["bicubic", "stage1"], env={})
    kind, images, _ = plan_images(
        str(data), lr=str(data) if mode == "paired" else None, degrade="bicubic" if mode == "degrade" else None,
        no_reference=False, scale=4, recursive=False,
    )
    plan = EvalPlan(tmp_path / "out", kind, images, 4, variants, ("psnr_y",), {"hr": str(data), "lr": None}, degrade="bicubic" if mode == "degrade" else None)
    events = Recorder()
    results = run_evaluation(plan, events)  # type: ignore[arg-type]
    assert results.exit_code == 0
    assert events.total == events.advanced == (2 if mode == "degrade" else 0) + 2 * 2 * 2
    assert len(events.records) == 4 and events.phases[-1] == "writing reports"
