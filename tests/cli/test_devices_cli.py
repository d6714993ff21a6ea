"""`cassr upscale --device A,B` through the real command on tiny weights: one image spreads its tiles over
the devices and equals the one-device result; a batch runs one pipeline per device and keeps the bytes,
records and their order; bad device lists are usage errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_support import cassr, describe, json_lines, save_rgb
from PIL import Image

SMALL = ["--steps", "2", "--tile-size", "64", "--tile-overlap", "32", "--tile-batch", "1", "--vae-tile-size", "128",
         "--activation-tile-size", "32", "--activation-tile-overlap", "8", "--seed", "3"]  # fmt: skip


def upscale(tiny_weights: Path, src: Path, dest: Path, device: str, *extra: str):  # noqa: ANN201
    result = cassr(["upscale", src, dest, "--weights-dir", tiny_weights, *SMALL, "--device", device, "--json", *extra])
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int16)


@pytest.mark.parametrize("mode", ["per-step", "cached"])
def test_one_image_on_two_cpu_replicas_equals_one_device(tmp_path: Path, tiny_weights: Path, mode: str) -> None:
    photo = save_rgb(tmp_path / "in" / "photo.png", h=24, w=28, seed=5)
    outputs = {}
    for device in ("cpu", "cpu,cpu"):
        dest = tmp_path / device.replace(",", "-")
        result = upscale(tiny_weights, photo, dest, device, "--guidance-mode", mode)
        assert result.exit_code == 0, describe(result)
        [record] = json_lines(result)
        assert record["status"] == "ok"
        outputs[device] = (pixels(dest / "photo.png"), record["stats"]["denoise"])
    (one, one_stats), (two, two_stats) = outputs["cpu"], outputs["cpu,cpu"]
    assert one.shape == two.shape == (96, 112, 3)
    assert int(np.abs(one - two).max()) <= 1  # float tolerance, after rounding to 8 bits
    spread = two_stats["devices"]
    assert [d["device"] for d in spread] == ["cpu", "cpu"]
    assert all(d["tile_batches"] > 0 and d["unet_calls"] > 0 for d in spread)  # both replicas computed tiles
    assert sum(d["tile_batches"] for d in spread) == one_stats["steps"] * one_stats["tiles"]  # tile batch 1
    assert sum(d["unet_calls"] for d in spread) == one_stats["unet_calls"]


def test_a_batch_uses_one_pipeline_per_device_with_the_same_bytes_and_records(tmp_path: Path, tiny_weights: Path) -> None:
    src = tmp_path / "in"
    for i, side in enumerate((40, 12, 8, 16, 8)):  # the first image is the slowest: records still keep plan order
        save_rgb(src / f"p{i}.png", h=side, w=side, seed=i)
    (src / "p2.png").write_bytes(b"not an image")  # a bad image fails, the batch goes on
    runs = {}
    for device in ("cpu", "cpu,cpu"):
        dest = tmp_path / device.replace(",", "-")
        dest.mkdir()
        (dest / "p4.png").write_bytes(b"kept")  # an existing output is skipped
        result = upscale(tiny_weights, src, dest, device)
        assert result.exit_code == 1, describe(result)
        runs[device] = (dest, json_lines(result))
    (dest1, one), (dest2, two) = runs["cpu"], runs["cpu,cpu"]

    def view(records: list[dict]) -> list[tuple]:
        return [(Path(r["input"]).name, r["output"] and Path(r["output"]).name, r["status"]) for r in records]

    assert view(two) == view(one)  # the same records in the same order
    assert [s for _, _, s in view(one)] == ["skipped", "ok", "ok", "failed", "ok"]
    for name in ("p0.png", "p1.png", "p3.png"):
        assert (dest2 / name).read_bytes() == (dest1 / name).read_bytes(), name
    assert (dest2 / "p4.png").read_bytes() == b"kept"
    assert sorted(p.name for p in dest2.iterdir()) == sorted(p.name for p in dest1.iterdir())  # nothing left behind
    computed = [r for r in two if r["status"] != "skipped"]
    assert {r["stats"]["device"]["index"] for r in computed} == {0, 1}  # both pipelines took images
    assert all(r["stats"]["device"]["name"] == "cpu" for r in computed)
    assert all("devices" not in r["stats"].get("denoise", {}) for r in computed)  # whole images, not tiles


@pytest.mark.parametrize(
    ("device", "reason"),
    [("cuda:0,,", "an entry is empty"), ("cuda:0,cuda:0", "cuda:0 is listed twice"),
     ("cpu,cuda:1", "cpu and cuda cannot be mixed"), ("cuda,cuda:1", "'cuda' cannot be in a list")],
)  # fmt: skip
def test_bad_device_lists_are_usage_errors(tmp_path: Path, device: str, reason: str) -> None:
    photo = save_rgb(tmp_path / "a.png")
    result = cassr(["upscale", photo, tmp_path / "out", "--steps", "0", "--device", device])
    assert result.exit_code == 2, describe(result)
    assert f"invalid device = {device!r}" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
