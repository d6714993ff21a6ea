"""`cassr eval` through the real command: outputs through the runner, reports, --json purity, re-runs,
unavailable metrics, exit codes.

Stage 1 uses an identity-like ×4 model (nearest-neighbour upsampling, see eval_support), so every output
can be checked pixel for pixel.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from eval_support import (
    BUILT_IN_METRICS,
    TRACEBACK,
    cassr,
    describe,
    json_lines,
    make_pairs,
    pixels,
    save,
    textured,
    write_identity_model,
)
from PIL import Image

from cassr_cli.evaluation.imresize import imresize
from cassr_cli.evaluation.metrics.full_reference import full_reference_scores

SIZES = [(96, 128), (112, 96)]
VARIANTS = ["bicubic", "stage1", "cassr", "tiles"]
UPSCALE_KEYS = {"input", "output", "status", "seconds", "error", "stats"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return make_pairs(tmp_path / "data", SIZES)


def run_eval(data: Path, out: Path, model: Path, *extra: str | Path):  # noqa: ANN201
    return cassr(
        [
            "eval", data, out, "--lr", data, "--activation", model, "--steps", "0", "--metrics", BUILT_IN_METRICS,
            "--variant", "tiles=--activation-tile-size 32 --activation-tile-overlap 8", "--json", *extra,
        ]
    )


def test_variants_go_through_the_runner_and_every_report_is_written(tmp_path: Path, data: Path, model: Path) -> None:
    out = tmp_path / "out"
    result = run_eval(data, out, model)
    assert result.exit_code == 0, describe(result)
    records = json_lines(result)  # every stdout line is JSON (it would raise otherwise)
    assert [(r["variant"], r["image"]) for r in records] == [(v, i) for i in ("im0.png", "im1.png") for v in VARIANTS]
    for record in records:
        assert set(record) >= UPSCALE_KEYS and record["status"] == "ok"
        assert set(record["metrics"]) == {"psnr_y", "ssim_y", "psnr_rgb", "niqe"}
        assert Path(record["output"]) == out / record["variant"] / record["image"]
    for i in range(len(SIZES)):
        lr = pixels(data / f"im{i}_LR.png")
        hr = pixels(data / f"im{i}_HR.png")
        nearest = lr.repeat(4, axis=0).repeat(4, axis=1)
        for variant in ("stage1", "cassr", "tiles"):  # identity model: nearest-neighbour ×4, tiled or not
            assert np.array_equal(pixels(out / variant / f"im{i}.png"), nearest), variant
        bicubic = pixels(out / "bicubic" / f"im{i}.png")
        assert np.array_equal(bicubic, imresize(lr, *hr.shape[:2], quantize=True).astype(np.uint8))
        # the recorded metrics are those of the written output against the HR
        expected = full_reference_scores(bicubic.astype(float), hr.astype(float), border=4)
        got = next(r for r in records if r["variant"] == "bicubic" and r["image"] == f"im{i}.png")["metrics"]
        assert got["psnr_y"] == pytest.approx(expected["psnr_y"]) and got["ssim_y"] == pytest.approx(expected["ssim_y"])

    doc = json.loads((out / "metrics.json").read_text())
    assert {"cassr_version", "device", "variants", "metrics", "scale", "mode"} <= set(doc)
    assert doc["device"] == "cpu" and doc["mode"] == "paired" and doc["scale"] == 4
    assert list(doc["variants"]) == VARIANTS
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    for name in ("stage1", "cassr", "tiles"):
        entry = doc["variants"][name]
        assert entry["models"] == [{"role": "activation", "file": str(model), "sha256": sha}]
        assert entry["options"]["steps"] == 0 and entry["options"]["activation"] == str(model)
        assert set(entry["images"]) == {"im0.png", "im1.png"}
        assert entry["mean"]["psnr_y"] == pytest.approx(np.mean([entry["images"][i]["psnr_y"] for i in entry["images"]]))
    assert doc["variants"]["tiles"]["options"]["activation_tile_size"] == 32
    assert doc["variants"]["tiles"]["args"] == "--activation-tile-size 32 --activation-tile-overlap 8"
    assert doc["variants"]["bicubic"]["models"] == []
    assert doc["metrics"]["psnr_y"]["available"] is True and "lpips" not in doc["metrics"]

    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(VARIANTS) * len(SIZES)
    assert float(rows[0]["psnr_y"]) == pytest.approx(doc["variants"][rows[0]["variant"]]["images"][rows[0]["image"]]["psnr_y"])
    html = (out / "report.html").read_text()
    assert html.count('class="panel"') == len(SIZES) * (1 + len(VARIANTS))
    with Image.open(out / "sheet.png") as sheet:
        sheet.load()
    for i in range(len(SIZES)):
        for label in ("_reference", *VARIANTS):
            assert (out / "report" / f"im{i}" / f"{label}.png").is_file()
    # the stderr table: a row per variant, the best bicubic PSNR starred (identity upsampling is worse)
    table = result.stderr
    assert all(f"│ {v} " in table for v in VARIANTS)
    bicubic_row = next(line for line in table.splitlines() if line.startswith("│ bicubic"))
    assert f"{doc['variants']['bicubic']['mean']['psnr_y']:.2f}*" in bicubic_row
    assert TRACEBACK not in result.stderr


def test_rerun_reuses_outputs_and_overwrite_recomputes(tmp_path: Path, data: Path, model: Path) -> None:
    out = tmp_path / "out"
    first = run_eval(data, out, model)
    assert first.exit_code == 0, describe(first)
    outputs = sorted(out.glob("*/im*.png"))
    assert len(outputs) == len(VARIANTS) * len(SIZES)
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    second = run_eval(data, out, model)
    assert second.exit_code == 0, describe(second)
    records = json_lines(second)
    assert {r["status"] for r in records} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps
    before = {(r["variant"], r["image"]): r for r in json_lines(first)}
    for record in records:  # same scores, and the first run's per-image stats are reported again
        old = before[(record["variant"], record["image"])]
        assert record["metrics"] == old["metrics"]
        assert record["seconds"] == old["seconds"] and record["stats"] == old["stats"]
    third = run_eval(data, out, model, "--overwrite")
    assert third.exit_code == 0, describe(third)
    assert {r["status"] for r in json_lines(third)} == {"ok"}
    assert all(p.stat().st_mtime_ns != stamps[p] for p in outputs)
    # other options for an existing variant are refused instead of reusing stale outputs
    changed = cassr(
        ["eval", data, out, "--lr", data, "--activation", model, "--steps", "0", "--metrics", "psnr_y",
         "--variant", "tiles=--activation-tile-size 64"]
    )
    assert changed.exit_code == 2, describe(changed)
    assert "activation_tile_size: 32 → 64" in changed.stderr and "--overwrite" in changed.stderr


def test_scores_are_cached_until_an_output_changes(
    tmp_path: Path, data: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cassr_cli.evaluation import scoring

    out = tmp_path / "out"
    args = ["eval", data, out, "--lr", data, "--activation", model, "--steps", "0", "--only", "bicubic,stage1", "--json"]
    first = cassr([*args, "--metrics", "psnr_y"])
    assert first.exit_code == 0, describe(first)
    reads: list[Path] = []
    real_read = scoring.read_picture

    def counting(path: Path, **kwargs: object):  # noqa: ANN202
        reads.append(Path(path))
        return real_read(path, **kwargs)

    monkeypatch.setattr(scoring, "read_picture", counting)
    again = cassr([*args, "--metrics", "psnr_y"])
    assert again.exit_code == 0, describe(again)
    assert not [p for p in reads if out in p.parents]  # no output read again: cached scores and crops
    assert [r["metrics"] for r in json_lines(again)] == [r["metrics"] for r in json_lines(first)]
    # a changed output is re-scored; a metric asked for the first time is computed for every output
    reads.clear()
    changed = out / "stage1" / "im0.png"
    changed.write_bytes(changed.read_bytes())  # same pixels, new modification time
    assert cassr([*args, "--metrics", "psnr_y"]).exit_code == 0
    assert [p for p in reads if out in p.parents] == [changed]
    reads.clear()
    more = cassr([*args, "--metrics", "psnr_y,niqe"])
    assert more.exit_code == 0, describe(more)
    assert all(set(r["metrics"]) == {"psnr_y", "niqe"} for r in json_lines(more))
    assert len([p for p in reads if out in p.parents]) == 4
    reads.clear()
    (out / "report" / "im1" / "bicubic.png").unlink()
    cassr([*args, "--metrics", "psnr_y,niqe"])
    assert [p for p in reads if out in p.parents] == [out / "bicubic" / "im1.png"]  # only to cut the crop again
    assert (out / "report" / "im1" / "bicubic.png").is_file()


def test_unavailable_metric_is_reported_once_not_a_crash(tmp_path: Path, data: Path, model: Path) -> None:
    out = tmp_path / "out"
    result = cassr(
        ["eval", data, out, "--lr", data, "--activation", model, "--steps", "0", "--only", "bicubic",
         "--metrics", "psnr_y,lpips,musiq", "--json"]
    )
    assert result.exit_code == 0, describe(result)
    for key in ("lpips", "musiq"):
        assert result.stderr.count(f"metric unavailable: {key}:") == 1, result.stderr
    records = json_lines(result)  # nothing pyiqa prints reaches stdout
    assert len(records) == len(SIZES) and all(set(r["metrics"]) == {"psnr_y"} for r in records)
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("lpips", "musiq"):
        entry = doc["metrics"][key]
        assert entry["available"] is False and entry["reason"] and entry["hint"]
        if "weights" in entry["reason"]:  # pyiqa installed: every missing file with its URL and path
            assert entry["files"] and all(f["url"].startswith("https://") and not f["present"] for f in entry["files"])
        else:
            assert "cassr[metrics]" in entry["hint"]
    html = (out / "report.html").read_text()
    assert "LPIPS unavailable" in html and "LPIPS ↓" not in html


def test_image_failures_exit_1_and_the_rest_is_scored(tmp_path: Path, data: Path, model: Path) -> None:
    (data / "im1_LR.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = cassr(
        ["eval", data, out, "--lr", data, "--activation", model, "--steps", "0", "--metrics", "psnr_y", "--json",
         "--only", "bicubic,stage1"]
    )
    assert result.exit_code == 1, describe(result)
    records = {(r["variant"], r["image"]): r for r in json_lines(result)}
    assert records[("stage1", "im1.png")]["status"] == "failed" and records[("stage1", "im1.png")]["error"]
    assert records[("stage1", "im0.png")]["status"] == "ok" and "psnr_y" in records[("stage1", "im0.png")]["metrics"]
    doc = json.loads((out / "metrics.json").read_text())
    assert {(f["variant"], f["image"]) for f in doc["failures"]} == {("bicubic", "im1.png"), ("stage1", "im1.png")}
    assert TRACEBACK not in result.stderr


def test_usage_errors_exit_2(tmp_path: Path, data: Path, model: Path) -> None:
    out = tmp_path / "out"
    cases = {
        "exactly one of": [],
        "does not use --format": ["--lr", data, "--format", "jpg"],
        "apply to the whole evaluation": ["--lr", data, "--variant", "x=--scale 2"],
        "reserved": ["--lr", data, "--variant", "lr=--steps 1"],
        "is not NAME=": ["--lr", data, "--variant", "--steps 1"],
        "given twice": ["--lr", data, "--variant", "a=--steps 1", "--variant", "a=--steps 2"],
        "unknown metric": ["--lr", data, "--metrics", "psnr,fid"],
        "need(s) a reference": ["--no-reference", "--metrics", "psnr_y"],
        "integer --scale": ["--lr", data, "--scale", "2.5"],
        "not x,y,w,h": ["--lr", data, "--crop", "1,2,3"],
        "--only names unknown": ["--lr", data, "--only", "bicubic,nope"],
        "invalid options of variant": ["--lr", data, "--variant", "x=--no-such-option 1"],
    }
    for expected, args in cases.items():
        result = cassr(["eval", data, out, *args, "--activation", model, "--steps", "0"])
        assert result.exit_code == 2, f"{args}: {describe(result)}"
        assert expected in result.stderr, f"{args}: {result.stderr}"
        assert TRACEBACK not in result.stderr
    (data / "im1_LR.png").unlink()
    unpaired = cassr(["eval", data, out, "--lr", data, "--activation", model, "--steps", "0"])
    assert unpaired.exit_code == 2 and "im1_HR.png" in unpaired.stderr, describe(unpaired)
    assert not any(out.glob("*/*.png"))


def test_missing_weights_exit_3_before_any_output(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "out"
    result = cassr(["eval", data, out, "--lr", data, "--weights-dir", tmp_path / "empty", "--metrics", "psnr_y"])
    assert result.exit_code == 3, describe(result)
    assert "cassr download-weights" in result.stderr
    assert not any(out.glob("*/*.png"))


def test_degrade_is_deterministic_and_seeded(tmp_path: Path, model: Path) -> None:
    hr_dir = tmp_path / "hr"
    for i, (h, w) in enumerate([(98, 130), (96, 96)]):  # 98x130: mod-cropped to 96x128
        save(hr_dir / f"p{i}.png", textured(h, w, seed=10 + i))
    common = ["--activation", model, "--steps", "0", "--only", "stage1", "--metrics", "psnr_y"]

    def lr_bytes(out: Path, *args: str) -> dict[str, bytes]:
        result = cassr(["eval", hr_dir, out, *args, *common])
        assert result.exit_code == 0, describe(result)
        return {p.name: p.read_bytes() for p in sorted((out / "lr").glob("*.png"))}

    bicubic = lr_bytes(tmp_path / "b", "--degrade", "bicubic")
    hr0 = pixels(hr_dir / "p0.png")[:96, :128]
    with Image.open(tmp_path / "b" / "lr" / "p0.png") as im:
        assert np.array_equal(np.asarray(im), imresize(hr0, 24, 32, quantize=True).astype(np.uint8))
    first = lr_bytes(tmp_path / "r1", "--degrade", "realesrgan", "--seed", "5")
    again = lr_bytes(tmp_path / "r2", "--degrade", "realesrgan", "--seed", "5")
    other = lr_bytes(tmp_path / "r3", "--degrade", "realesrgan", "--seed", "6")
    assert first == again and set(first) == {"p0.png", "p1.png"}
    assert all(first[n] != other[n] for n in first) and first != bicubic
    # an image's LR does not depend on the other images of the set
    (hr_dir / "p1.png").unlink()
    alone = lr_bytes(tmp_path / "r4", "--degrade", "realesrgan", "--seed", "5")
    assert alone == {"p0.png": first["p0.png"]}
    # the LR recipe is checked on re-runs: another seed into the same OUT is refused
    refused = cassr(["eval", hr_dir, tmp_path / "r4", "--degrade", "realesrgan", "--seed", "7", *common])
    assert refused.exit_code == 2 and "seed: 5 → 7" in refused.stderr, describe(refused)
    doc = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert doc["mode"] == "degrade" and doc["degrade"] == "realesrgan" and doc["seed"] == 5


def test_no_reference_scores_outputs_with_no_reference_metrics(tmp_path: Path, model: Path) -> None:
    photos = tmp_path / "photos"
    save(photos / "a.png", textured(32, 40, seed=1))
    out = tmp_path / "out"
    result = cassr(["eval", photos, out, "--no-reference", "--activation", model, "--steps", "0", "--json", "--only", "stage1"])
    assert result.exit_code == 0, describe(result)
    (record,) = json_lines(result)
    assert set(record["metrics"]) == {"niqe"} and math.isfinite(record["metrics"]["niqe"])
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["mode"] == "no-reference" and doc["reference"]["label"] == "input"
    assert set(doc["metrics"]) == {"niqe", "musiq", "maniqa", "clipiqa"}
    html = (out / "report.html").read_text()
    assert 'data-label="input (×4)"' in html
    with Image.open(out / "report" / "a" / "_reference.png") as ref, Image.open(out / "report" / "a" / "stage1.png") as sr:
        assert ref.size == sr.size  # the input is shown enlarged to the outputs' scale, same region


def test_outputs_inside_the_inputs_are_never_inputs(tmp_path: Path, model: Path) -> None:
    photos = tmp_path / "photos"
    save(photos / "a.png", textured(24, 24, seed=2))
    args = ["eval", photos, photos / "out", "--no-reference", "--recursive", "--activation", model, "--steps", "0",
            "--only", "stage1", "--metrics", "niqe", "--json"]
    for _ in range(2):
        result = cassr(args)
        assert result.exit_code == 0, describe(result)
        assert [r["image"] for r in json_lines(result)] == ["a.png"]
    (tmp_path / "file").write_text("x")
    blocked = cassr(["eval", photos, tmp_path / "file", "--no-reference", "--activation", model, "--steps", "0"])
    assert blocked.exit_code == 2 and "must be a folder" in blocked.stderr, describe(blocked)


def test_given_crop_is_used_for_every_picture(tmp_path: Path, data: Path, model: Path) -> None:
    out = tmp_path / "out"
    result = cassr(
        ["eval", data, out, "--lr", data, "--activation", model, "--steps", "0", "--only", "bicubic",
         "--metrics", "psnr_y", "--crop", "8,16,40,30"]
    )
    assert result.exit_code == 0, describe(result)
    hr = pixels(data / "im0_HR.png")
    with Image.open(out / "report" / "im0" / "_reference.png") as crop:
        assert np.array_equal(np.asarray(crop.convert("RGB")), hr[16:46, 8:48])
    assert json.loads((out / "metrics.json").read_text())["crop"] == {"x": 8, "y": 16, "w": 40, "h": 30}


@pytest.mark.slow
def test_a_diffusion_variant_records_unet_calls(tmp_path: Path, tiny_weights: Path) -> None:
    data = make_pairs(tmp_path / "data", [(96, 96)])
    out = tmp_path / "out"
    result = cassr(
        ["eval", data, out, "--lr", data, "--weights-dir", tiny_weights, "--steps", "1", "--only", "stage1,cassr",
         "--metrics", "psnr_y", "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, describe(result)
    records = {r["variant"]: r for r in json_lines(result)}
    assert records["cassr"]["stats"]["denoise"]["unet_calls"] >= 1
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["variants"]["cassr"]["summary"]["unet_calls_per_image"] >= 1
    assert {m["role"] for m in doc["variants"]["cassr"]["models"]} == {"activation", "base"}
