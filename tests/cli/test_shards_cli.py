"""`cassr upscale --shard K/N` (and CASSR_SHARD, as a job array sets it): the N runs together write every
output once, each only its own share, with the bytes of one run over everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import cassr, describe, json_lines, save_rgb, write_identity_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def test_shards_split_the_batch_disjointly_and_cover_it(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    sizes = [(40, 24), (8, 8), (24, 24), (16, 40), (8, 16), (32, 32), (12, 12)]
    for i, (h, w) in enumerate(sizes):
        save_rgb(src / f"p{i}.png", h=h, w=w, seed=i)
    whole = cassr(["upscale", src, tmp_path / "whole", "--activation", model, "--steps", "0", "-q"])
    assert whole.exit_code == 0, describe(whole)
    dest = tmp_path / "out"
    written: list[str] = []
    for k in (1, 2, 3):
        args = ["upscale", src, dest, "--activation", model, "--steps", "0", "--json"]
        result = cassr([*args, "--shard", f"{k}/3"]) if k != 2 else cassr(args, env={"CASSR_SHARD": "2/3"})
        assert result.exit_code == 0, describe(result)
        records = json_lines(result)
        assert records and all(r["status"] == "ok" for r in records), records  # only its own share, all new
        assert f"shard {k}/3: {len(records)} of 7 image(s)" in result.stderr
        written += [Path(r["output"]).name for r in records]
    assert sorted(written) == sorted(f"p{i}.png" for i in range(7))
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == {p.name: p.read_bytes() for p in (tmp_path / "whole").iterdir()}


@pytest.mark.parametrize("value", ["4/3", "0/2", "two/3"])
def test_bad_shard_is_a_usage_error(tmp_path: Path, model: Path, value: str) -> None:
    save_rgb(tmp_path / "in" / "a.png")
    result = cassr(["upscale", tmp_path / "in", tmp_path / "out", "--activation", model, "--steps", "0", "--shard", value])
    assert result.exit_code == 2, describe(result)
    assert "shard" in result.stderr and "K/N" in result.stderr
