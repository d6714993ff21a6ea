"""Merging the ranks' records (scaleout/ranks.py): one record per input, ok/failed at once, a skip only
when every rank skipped it, the most telling skip reason, and rank detection from the launcher's
environment."""

from __future__ import annotations

import pytest

from cassr_cli.errors import EnvironmentNotReadyError
from cassr_cli.runner import ImageResult
from cassr_cli.scaleout.ranks import RankInfo, RecordMerger, detect_ranks, rank_device


def rec(name: str, status: str = "ok", error: str | None = None) -> ImageResult:
    return ImageResult(f"in/{name}", f"out/{name}" if status != "failed" else None, status, error=error)  # type: ignore[arg-type]


def test_ok_and_failed_pass_at_once_and_later_skips_are_dropped() -> None:
    merger = RecordMerger(3)
    assert merger.add(rec("a", "skipped", "in progress elsewhere")) is None
    ok = rec("a")
    assert merger.add(ok) is ok
    assert merger.add(rec("a", "skipped", "output exists")) is None
    bad = rec("b", "failed", "broken")
    assert merger.add(bad) is bad
    assert merger.add(rec("b", "skipped", "in progress elsewhere")) is None
    assert merger.results == [ok, bad]
    assert merger.flush() == []


def test_a_skip_is_printed_once_every_rank_reported_it_with_the_best_reason() -> None:
    merger = RecordMerger(3)
    assert merger.add(rec("a", "skipped", "in progress elsewhere")) is None
    assert merger.add(rec("a", "skipped", "output exists")) is None
    merged = merger.add(rec("a", "skipped", "in progress elsewhere"))
    assert merged is not None and merged.error == "output exists"
    held = [merger.add(rec("c", "skipped", "in progress elsewhere")) for _ in range(3)]
    assert held[:2] == [None, None] and held[2] is not None and held[2].error == "in progress elsewhere"
    assert [r.input for r in merger.results] == ["in/a", "in/c"]


def test_flush_keeps_finished_skips_and_drops_what_a_stopped_rank_was_computing() -> None:
    merger = RecordMerger(2)
    merger.add(rec("a", "skipped", "output exists"))
    merger.add(rec("b", "skipped", "in progress elsewhere"))
    flushed = merger.flush()
    assert [(r.input, r.error) for r in flushed] == [("in/a", "output exists")]
    assert merger.add(rec("a", "skipped", "output exists")) is None


def test_records_survive_the_trip_between_ranks() -> None:
    result = ImageResult("in/a.png", "out/a.png", "ok", seconds=1.23456, stats={"read": {"seconds": 0.5}})
    again = ImageResult.from_json(result.to_json())
    assert again.to_json() == result.to_json()


def test_detect_ranks_from_the_launcher_environment() -> None:
    assert detect_ranks({}) is None
    assert detect_ranks({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert detect_ranks({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == RankInfo(2, 4, 0)
    assert detect_ranks({"WORLD_SIZE": "2", "RANK": "1"}) == RankInfo(1, 2, 1)
    with pytest.raises(EnvironmentNotReadyError):
        detect_ranks({"WORLD_SIZE": "2"})


def test_rank_device_without_a_gpu() -> None:
    assert rank_device("auto", 3) == "cpu"
    assert rank_device("cpu", 3) == "cpu"
    assert rank_device("cuda:1", 3) == "cuda:1"
    assert [rank_device("cuda:2,cuda:3", rank) for rank in range(3)] == ["cuda:2", "cuda:3", "cuda:2"]


def test_the_python_api_runs_a_ray_config_on_ray(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import cassr_cli.scaleout.ray_pipeline as ray_pipeline
    from cassr_cli.config import UpscaleConfig
    from cassr_cli.runner import BatchPlan, BatchSummary, run_batch

    calls = []

    def spy(plan, config, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append((plan, config, kwargs))
        return BatchSummary()

    monkeypatch.setattr(ray_pipeline, "run_batch_on_ray", spy)
    plan = BatchPlan(outputs=[], notes=[], dest=tmp_path)
    run_batch(plan, UpscaleConfig(ray="auto"))
    assert len(calls) == 1 and calls[0][1].ray == "auto"
    run_batch(plan, UpscaleConfig())
    assert len(calls) == 1
