"""`cassr upscale --ray`: a Ray Data pipeline (read → actor pool → atomic write) on a local cluster with two
CPU actors. Bytes of a local run, records once on a clean stdout, per-image failures as locally, an actor
killed mid-batch leaves every image done exactly once and no partial file, a re-run skips everything,
and sources the workers cannot read are a clear error.

Ray is a dev dependency: these tests never skip. One local cluster serves the module (the in-process
runs join it); one subprocess run starts its own with `--ray local`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import (
    cassr,
    describe,
    file_bytes,
    json_lines,
    partial_files,
    single_run_outputs,
    write_identity_model,
    write_photos,
)

from cassr_cli.config import UpscaleConfig
from cassr_cli.errors import EnvironmentNotReadyError
from cassr_cli.io.image import read_image
from cassr_cli.runner import plan_batch
from cassr_cli.scaleout.ray_pipeline import run_batch_on_ray
from cassr_cli.testing.faults import CrashingPipelineFactory, finished_digests, input_digest

IMAGES = 6


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    import logging

    import ray

    # Two CPU actors (one per two CPUs) plus room for the read and write tasks. Ray gives its raylet
    # 30 s to register, which a heavily loaded machine can miss: try again before giving up.
    for attempt in range(3):
        try:
            ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photos(tmp_path_factory.mktemp("in"), IMAGES, h=48, w=64)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, photos: Path, model: Path) -> dict[str, bytes]:
    return single_run_outputs(photos, tmp_path_factory.mktemp("reference"), model)


def test_ray_run_matches_a_local_run_and_a_rerun_skips_everything(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in photos.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    local = cassr(["upscale", src, tmp_path / "local", "--activation", model, "--steps", "0", "--json"])
    dest = tmp_path / "out"
    result = cassr(["upscale", src, dest, "--activation", model, "--steps", "0", "--json", "--ray", "local"])
    assert result.exit_code == 1, describe(result)  # broken.png failed, the batch went on
    records = json_lines(result)
    assert sorted(r["input"] for r in records) == sorted(r["input"] for r in json_lines(local))
    (bad,) = [r for r in records if r["status"] == "failed"]
    (local_bad,) = [r for r in json_lines(local) if r["status"] == "failed"]
    assert bad["error"] == local_bad["error"] and bad["output"] is None
    assert all(r["status"] == "ok" and r["output"] == str(dest / Path(r["input"]).name) for r in records if r is not bad)
    assert file_bytes(dest) == reference
    assert partial_files(dest) == []
    assert result.stderr.count(f"{IMAGES} done · 0 skipped · 1 failed") == 1

    again = cassr(["upscale", src, dest, "--activation", model, "--steps", "0", "--json", "--ray", "local"])
    assert again.exit_code == 1, describe(again)  # broken.png fails again; everything else is skipped
    statuses = Counter((r["status"], r["error"]) for r in json_lines(again))
    assert statuses[("skipped", "output exists")] == IMAGES and sum(statuses.values()) == IMAGES + 1
    assert file_bytes(dest) == reference


def test_an_actor_killed_mid_batch_leaves_every_image_done_once(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes]
) -> None:
    config = UpscaleConfig(activation=str(model), steps=0, ray="local")
    dest = tmp_path / "out"
    log = tmp_path / "log"
    log.mkdir()
    plan = plan_batch([str(photos)], dest, config)
    summary = run_batch_on_ray(plan, config, pipeline_factory=CrashingPipelineFactory(log, crash_on=3), actors=2)
    assert (log / "crashed").exists(), "no actor was killed"
    assert [r.status for r in summary.results] == ["ok"] * IMAGES, [r.to_json() for r in summary.results]
    assert sorted(Path(r.input).name for r in summary.results) == sorted(reference)
    # Each image was computed to the end exactly once (the killed attempt never finished).
    expected = sorted(input_digest(read_image(p, max_pixels=10**8).rgb) for p in photos.iterdir())
    assert sorted(finished_digests(log)) == expected
    assert file_bytes(dest) == reference
    assert partial_files(dest) == []


def test_the_pipeline_driven_from_an_actor_in_the_cluster_as_for_ray_client(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes]
) -> None:
    config = UpscaleConfig(activation=str(model), steps=0, ray="local")
    dest = tmp_path / "out"
    summary = run_batch_on_ray(plan_batch([str(photos)], dest, config), config, driver_in_cluster=True)
    assert sorted((Path(r.input).name, r.status) for r in summary.results) == [(name, "ok") for name in sorted(reference)]
    assert file_bytes(dest) == reference
    assert partial_files(dest) == []


def test_sources_the_workers_cannot_read_are_a_clear_error(tmp_path: Path, photos: Path, model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in photos.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    config = UpscaleConfig(activation=str(model), steps=0, ray="local")
    plan = plan_batch([str(src)], tmp_path / "out", config)
    (src / "img0.png").unlink()  # as if only the driver's machine had the file
    with pytest.raises(EnvironmentNotReadyError) as caught:
        run_batch_on_ray(plan, config)
    assert f"cannot read {src / 'img0.png'}" in caught.value.message
    assert "file system every node mounts" in (caught.value.hint or "")


def test_ray_local_from_the_command_line_keeps_stdout_for_records(
    tmp_path: Path, photos: Path, model: Path, reference: dict[str, bytes]
) -> None:
    dest = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASSR_", "RAY_ADDRESS"))}
    cmd = [sys.executable, "-m", "cassr_cli", "upscale", str(photos), str(dest), "--activation", str(model), "--steps", "0",
           "--ray", "local", "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]  # nothing but records on stdout
    assert sorted(Path(r["output"]).name for r in records) == sorted(reference)
    assert file_bytes(dest) == reference
    assert "INFO" not in done.stderr  # no terminal: Ray's progress and info logs stay off


def test_missing_weights_stop_before_the_cluster_is_used(tmp_path: Path, photos: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    result = cassr(["upscale", photos, tmp_path / "out", "--weights-dir", empty, "--steps", "0", "--ray", "local"])
    assert result.exit_code == 3, describe(result)
    assert "cassr download-weights" in result.stderr
    assert not (tmp_path / "out").exists()
