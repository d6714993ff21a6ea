"""One error for several missing or corrupt models, with one command that fixes them all."""

from __future__ import annotations

import pytest

from cassr_cli.errors import WeightsCorruptError, WeightsMissingError
from cassr_cli.weights.store import require_all_installed, write_stamp


def _install(root, name: str, size: int = 8) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"x" * size)
    write_stamp(folder, name, {"w.bin": (size, "0" * 64)})


def test_all_installed_passes(tmp_path):
    _install(tmp_path, "a")
    _install(tmp_path, "b")
    require_all_installed(tmp_path, ["a", "b", "a"])


def test_every_missing_model_is_named_in_one_command(tmp_path):
    _install(tmp_path, "a")
    with pytest.raises(WeightsMissingError) as info:
        require_all_installed(tmp_path, ["a", "b", "c"])
    assert "'b'" in info.value.message and "'c'" in info.value.message
    assert info.value.hint.endswith("b c")


def test_corrupt_only_asks_for_force(tmp_path):
    _install(tmp_path, "a")
    (tmp_path / "a" / "w.bin").write_bytes(b"x")  # truncated
    with pytest.raises(WeightsCorruptError) as info:
        require_all_installed(tmp_path, ["a"])
    assert "--force" in info.value.hint


def test_missing_and_corrupt_together(tmp_path):
    _install(tmp_path, "a")
    (tmp_path / "a" / "w.bin").write_bytes(b"x")
    with pytest.raises(WeightsMissingError) as info:
        require_all_installed(tmp_path, ["a", "b"])
    assert "download-weights" in info.value.hint and "--force" in info.value.hint
