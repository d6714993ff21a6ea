"""`--shard K/N` (scaleout/shards.py): parsing, and shares that are disjoint, cover everything, are balanced
by pixel count and do not depend on the order the items come in."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cassr_cli.config import UpscaleConfig, parse_shard, resolve_config
from cassr_cli.errors import ConfigError
from cassr_cli.io.discover import InputItem
from cassr_cli.io.naming import PlannedOutput
from cassr_cli.scaleout.shards import assign_shards, header_pixels, select_shard


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("1/1", (1, 1)), ("2/8", (2, 8)), (" 3 / 3 ", (3, 3)), ("0/3", None), ("4/3", None), ("1/0", None),
     ("3", None), ("a/b", None), ("-1/3", None), ("1/3/4", None), ("", None)],
)  # fmt: skip
def test_parse_shard(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_shard(text) == parsed


def test_shard_is_a_validated_config_field_with_an_environment_variable() -> None:
    with pytest.raises(ConfigError, match="shard"):
        UpscaleConfig(shard="5/4")
    resolved = resolve_config({}, env={"CASSR_SHARD": "3/4"})
    assert resolved.config.shard == "3/4" and resolved.sources["shard"] == "env CASSR_SHARD"


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=10**8), min_size=0, max_size=60),
    count=st.integers(min_value=1, max_value=9),
    data=st.data(),
)
def test_shards_are_disjoint_covering_balanced_and_order_independent(weights: list[int], count: int, data: st.DataObject) -> None:
    names = [f"out/{i:03d}.png" for i in range(len(weights))]
    assignment = assign_shards(weights, names, count)
    assert len(assignment) == len(weights) and all(0 <= s < count for s in assignment)  # each item in exactly one
    loads = [sum(w for w, s in zip(weights, assignment, strict=True) if s == k) for k in range(count)]
    if weights:
        assert max(loads) - min(loads) <= max(weights)  # greedy: within one image of even
    permutation = data.draw(st.permutations(range(len(weights))))
    shuffled = assign_shards([weights[i] for i in permutation], [names[i] for i in permutation], count)
    assert {names[i]: s for i, s in zip(permutation, shuffled, strict=True)} == dict(zip(names, assignment, strict=True))


def test_largest_images_are_spread_first() -> None:
    assert assign_shards([100, 1, 1, 100, 1, 1], list("abcdef"), 2) == [0, 0, 1, 1, 0, 1]


def planned(folder: Path, sizes: list[tuple[int, int]]) -> list[PlannedOutput]:
    out = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"img{i:02d}.png"
        Image.new("RGB", (w, h)).save(path)
        item = InputItem(path=path, relative=PurePosixPath(path.name), source=str(folder))
        out.append(PlannedOutput(item=item, output=folder / "out" / path.name, fmt="png"))
    return out


def test_select_shard_reads_sizes_from_headers_and_keeps_plan_order(tmp_path: Path) -> None:
    sizes = [(64, 64), (8, 8), (32, 32), (64, 32), (16, 16), (8, 8), (40, 40)]
    outputs = planned(tmp_path, sizes)
    assert header_pixels(outputs[3].item.path) == 64 * 32
    assert header_pixels(tmp_path / "missing.png") == 1
    shares = [select_shard(outputs, k, 3)[0] for k in (1, 2, 3)]
    chosen = [p.output for share in shares for p in share]
    assert sorted(chosen) == sorted(p.output for p in outputs) and len(set(chosen)) == len(chosen)
    for share in shares:
        assert share == [p for p in outputs if p in share]  # plan order
    pixels = [sum(w * h for (w, h), p in zip(sizes, outputs, strict=True) if p in share) for share in shares]
    assert max(pixels) - min(pixels) <= 64 * 64
    _, note = select_shard(outputs, 2, 3)
    assert note.startswith(f"shard 2/3: {len(shares[1])} of 7 image(s)")
    assert select_shard(outputs, 1, 1)[0] == outputs
