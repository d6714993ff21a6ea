"""Pairing HR and LR images in every supported layout, and the errors for what does not pair."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from eval_support import save, textured

from cassr_cli.errors import InputNotFoundError, UsageError
from cassr_cli.evaluation.pairing import pair_images, unpaired_images
from cassr_cli.evaluation.plan import plan_images


def touch(path: Path, h: int = 16, w: int = 16) -> Path:
    return save(path, textured(h, w))


def pairs(pairing) -> list[tuple[str, str, str]]:  # noqa: ANN001
    return [(str(i.name), i.hr.name, i.lr.name) for i in pairing.images]


def test_same_relative_name_in_two_folders_recursive_and_other_extension(tmp_path: Path) -> None:
    touch(tmp_path / "HR" / "a.png")
    touch(tmp_path / "HR" / "sub" / "b.png")
    touch(tmp_path / "LR" / "a.jpg")
    touch(tmp_path / "LR" / "sub" / "b.png")
    result = pair_images(str(tmp_path / "HR"), str(tmp_path / "LR"), scale=4, recursive=True)
    assert pairs(result) == [("a.png", "a.png", "a.jpg"), ("sub/b.png", "b.png", "b.png")]
    assert result.images[1].lr == tmp_path / "LR" / "sub" / "b.png"


def test_hr_lr_suffixes_in_one_folder(tmp_path: Path) -> None:
    for stem in ("img_001_SRF_4", "img_002_SRF_4"):
        touch(tmp_path / f"{stem}_HR.png")
        touch(tmp_path / f"{stem}_LR.png")
    result = pair_images(str(tmp_path), str(tmp_path), scale=4)
    assert pairs(result) == [
        ("img_001_SRF_4.png", "img_001_SRF_4_HR.png", "img_001_SRF_4_LR.png"),
        ("img_002_SRF_4.png", "img_002_SRF_4_HR.png", "img_002_SRF_4_LR.png"),
    ]
    assert any("_LR file(s)" in note for note in result.notes)


def test_hr_lr_suffixes_in_two_folders(tmp_path: Path) -> None:
    touch(tmp_path / "hr" / "x-HR.png")
    touch(tmp_path / "lr" / "x_LR.png")
    assert pairs(pair_images(str(tmp_path / "hr"), str(tmp_path / "lr"), scale=2)) == [("x.png", "x-HR.png", "x_LR.png")]


def test_div2k_layout_with_scale_subfolder(tmp_path: Path) -> None:
    touch(tmp_path / "DIV2K_valid_HR" / "0801.png")
    touch(tmp_path / "DIV2K_valid_HR" / "0802.png")
    touch(tmp_path / "DIV2K_valid_LR_bicubic" / "X4" / "0801x4.png")
    touch(tmp_path / "DIV2K_valid_LR_bicubic" / "X4" / "0802x4.png")
    touch(tmp_path / "DIV2K_valid_LR_bicubic" / "X2" / "0801x2.png")  # another scale: not looked at
    result = pair_images(str(tmp_path / "DIV2K_valid_HR"), str(tmp_path / "DIV2K_valid_LR_bicubic"), scale=4)
    assert pairs(result) == [("0801.png", "0801.png", "0801x4.png"), ("0802.png", "0802.png", "0802x4.png")]


def test_lr_bicubic_layout_inside_a_dataset_folder(tmp_path: Path) -> None:
    touch(tmp_path / "Set5" / "HR" / "baby.png")
    touch(tmp_path / "Set5" / "LR_bicubic" / "X4" / "babyx4.png")
    result = pair_images(str(tmp_path / "Set5" / "HR"), str(tmp_path / "Set5"), scale=4)
    assert pairs(result) == [("baby.png", "baby.png", "babyx4.png")]


def test_glob_sources(tmp_path: Path) -> None:
    for name in ("a", "b"):
        touch(tmp_path / f"{name}_HR.png")
        touch(tmp_path / f"{name}_LR.png")
    result = pair_images(str(tmp_path / "*_HR.png"), str(tmp_path / "*_LR.png"), scale=4)
    assert [str(i.name) for i in result.images] == ["a.png", "b.png"]
    with pytest.raises(UsageError, match="1 LR image.s. without an HR image: b_LR.png"):
        pair_images(str(tmp_path / "a_*.png"), str(tmp_path / "*_LR.png"), scale=4)


def test_unpaired_images_are_all_named_in_one_error(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        touch(tmp_path / "HR" / f"{name}.png")
    touch(tmp_path / "LR" / "a.png")
    touch(tmp_path / "LR" / "zz.png")
    with pytest.raises(UsageError) as info:
        pair_images(str(tmp_path / "HR"), str(tmp_path / "LR"), scale=4)
    message = info.value.message
    assert "2 HR image(s) without an LR image: b.png, c.png" in message
    assert "1 LR image(s) without an HR image: zz.png" in message
    assert info.value.hint and "X_HR/X_LR" in info.value.hint


def test_ambiguous_and_clashing_names(tmp_path: Path) -> None:
    touch(tmp_path / "HR" / "a.png")
    touch(tmp_path / "LR" / "a.png")
    touch(tmp_path / "LR" / "ax4.png")
    with pytest.raises(UsageError, match="match several LR images: a.png"):
        pair_images(str(tmp_path / "HR"), str(tmp_path / "LR"), scale=4)
    touch(tmp_path / "only" / "b.png")
    touch(tmp_path / "only" / "b.jpg")
    with pytest.raises(UsageError, match="share a name"):
        unpaired_images(str(tmp_path / "only"), with_reference=True)


def test_missing_source_and_size_mismatch(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError):
        pair_images(str(tmp_path / "nope"), str(tmp_path), scale=4)
    save(tmp_path / "x_HR.png", textured(64, 64))
    save(tmp_path / "x_LR.png", textured(15, 16))  # 15*4 = 60 ≠ 64
    save(tmp_path / "y_HR.png", textured(66, 67))  # mod-crop 64x64: fits 16x16
    save(tmp_path / "y_LR.png", textured(16, 16))
    with pytest.raises(UsageError) as info:
        plan_images(str(tmp_path), lr=str(tmp_path), degrade=None, no_reference=False, scale=4, recursive=False)
    assert "1 LR image(s) do not match" in info.value.message and "x.png" in info.value.message
    assert "y.png" not in info.value.message


def test_modes_need_exactly_one_source_of_lr(tmp_path: Path) -> None:
    touch(tmp_path / "a.png")
    with pytest.raises(UsageError, match="exactly one of"):
        plan_images(str(tmp_path), lr=None, degrade=None, no_reference=False, scale=4, recursive=False)
    with pytest.raises(UsageError, match="exactly one of"):
        plan_images(str(tmp_path), lr=str(tmp_path), degrade="bicubic", no_reference=False, scale=4, recursive=False)
    with pytest.raises(UsageError, match="unknown --degrade"):
        plan_images(str(tmp_path), lr=None, degrade="jpeg", no_reference=False, scale=4, recursive=False)
    mode, images, _ = plan_images(str(tmp_path), lr=None, degrade=None, no_reference=True, scale=4, recursive=False)
    assert mode == "no-reference" and images[0].hr is None and images[0].lr == tmp_path / "a.png"
    mode, images, _ = plan_images(str(tmp_path), lr=None, degrade="bicubic", no_reference=False, scale=4, recursive=False)
    assert mode == "degrade" and images[0].hr == tmp_path / "a.png" and images[0].lr is None
    assert images[0].name == PurePosixPath("a.png")
