"""Smoke test of the benchmark machinery on toy models: the report has its fields and sane numbers.

No timing is asserted: only that the instrument counts what the engine did and that FLOPs are counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks import run as bench
from benchmarks.flops import count_flops


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Toy models on a busy 2-core machine run far steadier on one thread; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _options() -> bench.Options:
    return bench.Options(
        device=torch.device("cpu"), dtype="auto", steps=None, dry_run=False, size="tiny", warmup=None, time_budget=None
    )


def test_run_reports_counts_flops_and_markdown(tmp_path: Path, one_thread: None) -> None:
    cases = [bench.Case("tiny-32x4", v, warmup=0) for v in ("a", "a-per-step-10", "c", "d")]
    doc = bench.run_cases(cases, _options(), tmp_path, "smoke")

    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert saved["environment"]["device_name"] and saved["environment"]["packages"]["torch"]
    assert [c["variant"] for c in saved["cases"]] == ["a", "a-per-step-10", "c", "d"], saved["skipped"]
    assert "| workload | variant | wall s |" in markdown and "### tiny-32x4 / a" in markdown

    by = {c["variant"]: c for c in doc["cases"]}
    for case in by.values():
        s = case["summary"]
        assert s["flops"] > 0 and s["wall_seconds"] > 0
        assert 0.0 <= s["outside_model_share"] < 1.0
        assert case["output_finite"]
        assert case["record"]["models"] and all(m["uncounted_calls"] == 0 for m in case["record"]["models"].values())

    # The instrument's UNet count is the engine's own count, cached (the default) and per-step.
    for variant in ("a", "a-per-step-10"):
        engine = by[variant]["engine_stats"]["denoise"]
        assert by[variant]["summary"]["unet_calls"] == engine["unet_calls"] > 0
        assert by[variant]["summary"]["unet_rows"] == engine["unet_rows"]
    per_step = by["a-per-step-10"]["engine_stats"]["denoise"]
    assert per_step["unet_rows"] == 3 * per_step["tiles"] * per_step["steps"]  # main + lr + ref rows
    cached = by["a"]["engine_stats"]["denoise"]
    assert cached["unet_rows"] == cached["tiles"] * (cached["steps"] + 2)  # main rows + one lr and one ref row
    act, act_stats = by["a"]["record"]["models"]["activation"], by["a"]["engine_stats"]["activation"]
    assert act["rows"] == act_stats["tiles"]  # stage-1 tiles go through the model in batches
    assert act["calls"] == -(-act_stats["tiles"] // act_stats["tile_batch"])
    stage_names = [r["stage"] for r in by["a"]["stages"] if not r["stage"].startswith(" ")]  # not sub-rows
    assert stage_names[:5] == ["activation", "encode", "denoise", "decode", "colorfix"]

    # diffusers' x4 upscaler: one UNet call per step, CFG doubles the rows; stage 1 alone calls no UNet.
    c = by["c"]["summary"]
    steps = by["c"]["settings"]["num_inference_steps"]
    assert steps == by["a"]["settings"]["steps"] and c["unet_calls"] == steps and c["unet_rows"] == 2 * steps
    assert by["d"]["summary"]["unet_calls"] == 0

    pairs = {r["pair"] for r in doc["analysis"]["comparisons"]}
    assert {"c / a", "d / a"} <= pairs


def test_scedit_activation_cases_count_its_unet_calls(tmp_path: Path, one_thread: None) -> None:
    """The SCEdit activation variants: the meter's activation UNet calls are the engine's, stage 1 alone
    runs no stage-2 UNet, and the activation is reported with its steps."""
    cases = [bench.Case("tiny-32x4", v, warmup=0) for v in ("s", "s-d")]
    doc = bench.run_cases(cases, bench.Options(
        device=torch.device("cpu"), dtype="auto", steps=1, dry_run=False, size="tiny", warmup=None, time_budget=None
    ), tmp_path, "smoke")
    by = {c["variant"]: c for c in doc["cases"]}
    assert set(by) == {"s", "s-d"}, doc["skipped"]
    for case in by.values():
        engine = case["engine_stats"]["activation"]
        assert engine["kind"] == "scedit" and engine["steps"] == 20
        assert case["summary"]["activation_unet_calls"] == engine["unet_calls"] > 0
        assert case["summary"]["activation_unet_rows"] == engine["unet_rows"] == engine["tiles"] * engine["steps"]
        assert case["output_finite"] and "MISMATCH" not in case["stages"][0]["note"]
    assert by["s-d"]["summary"]["unet_calls"] == 0 and by["s"]["summary"]["unet_calls"] > 0


def test_flops_match_design_facts_on_meta_device() -> None:
    """SD 2.1-base's UNet at a 64² latent is 0.80 TFLOP (DESIGN §8), attention included."""
    from cassr_cli.testing.architectures import sd21_base_unet

    unet = sd21_base_unet(device="meta")
    meta = torch.device("meta")
    flops = count_flops(
        lambda: unet(torch.zeros(1, 4, 64, 64, device=meta), torch.tensor(1, device=meta), encoder_hidden_states=torch.zeros(1, 77, 1024, device=meta))
    )
    assert flops == pytest.approx(0.80e12, rel=0.02)


def test_cpu_attention_is_counted() -> None:
    """torch's registry misses the CPU flash-attention kernel; benchmarks.flops adds it."""
    q = torch.rand(2, 5, 100, 64)
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == 4 * 2 * 5 * 100 * 100 * 64


def test_flops_are_counted_under_inference_mode() -> None:
    """The engine runs under ``torch.inference_mode``; torch 2.5 counted composite ops there as zero."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 4))
    x = torch.rand(2, 3, 16, 16)
    conv, linear = 2 * (2 * 8 * 14 * 14) * (3 * 3 * 3), 2 * 2 * (8 * 14 * 14) * 4
    with torch.inference_mode():
        assert count_flops(lambda: model(x)) == conv + linear


def test_colour_fix_blur_matches_its_previous_convolution() -> None:
    """The separable blur (engine fix) equals the dilated depthwise conv it replaced."""
    from benchmarks.micro import wavelet_blur_before, wavelet_color_fix_with
    from cassr_cli.engine.colorfix import wavelet_blur, wavelet_color_fix

    g = torch.Generator().manual_seed(0)
    x, ref = torch.rand((1, 3, 37, 50), generator=g), torch.rand((1, 3, 37, 50), generator=g)
    for radius in (1, 2, 8, 16, 40):
        torch.testing.assert_close(wavelet_blur(x, radius), wavelet_blur_before(x, radius))
    torch.testing.assert_close(wavelet_color_fix(x, ref), wavelet_color_fix_with(wavelet_blur_before, x, ref))


@pytest.mark.slow  # real-size architectures on the meta device: about 30 s here
def test_dry_run_takes_the_device_path_without_reading_the_device_back(tmp_path: Path, one_thread: None) -> None:
    """On the meta device any host read of a device value (``.item()``, ``bool()``, ``.tolist()``, ``.cpu()``)
    raises, so a dry run that completes shows the device path reads nothing back per tile; it reports the
    host work and the launches outside model calls."""
    options = bench.Options(
        device=torch.device("cpu"), dtype="auto", steps=None, dry_run=True, size="meta", warmup=0, time_budget=None
    )
    cases = [bench.Case("tiny-32x4", v, warmup=0) for v in ("a", "a-cached-shift")]
    doc = bench.run_cases(cases, options, tmp_path, "dry smoke")
    by = {c["variant"]: c for c in doc["cases"]}
    assert set(by) == {"a", "a-cached-shift"}, doc["skipped"]
    for case in by.values():
        assert case["summary"]["flops"] > 0
        assert case["dry_run_ops"]["device_ops"] > 0
        assert case["record"]["outside_model_cpu_seconds"] >= 0
        assert case["dry_run_ops"]["device_op_seconds"] > 0  # the meta operations are timed, to be reported apart
        assert case["summary"]["outside_model_cpu_seconds_less_device_ops"] is not None
    assert by["a"]["engine_stats"]["canvas"] == "device"
    denoise = by["a"]["engine_stats"]["denoise"]  # auto batches, sized for the 80 GiB stand-in GPU: every tile at once
    assert denoise["tiles"] > 1 and denoise["tile_batch"] == denoise["tiles"]
    assert by["a-cached-shift"]["engine_stats"]["denoise"]["tile_shift"] is True


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_tile_memory_sees_a_known_working_set() -> None:
    """The measurement behind benchmarks.tile_memory: a call that holds 256 MiB at its peak reads as about
    that (the peak is reset before the call, the baseline taken after freed heap is trimmed)."""
    from benchmarks.tile_memory import peak_above_baseline

    def hold() -> torch.Tensor:
        big = torch.ones(64 * 2**20)  # 256 MiB of float32, touched
        return big.sum()

    measured = peak_above_baseline(hold) / 2**20
    assert 240 < measured < 400, measured
    assert peak_above_baseline(lambda: torch.ones(4)) / 2**20 < 64
