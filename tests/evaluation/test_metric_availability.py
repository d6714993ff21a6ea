"""Learned metrics: what is missing is reported (package, module, weights) with how to get it; the
suite records unavailable metrics instead of raising, and loads each metric once."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from cassr_cli.evaluation.metrics import learned
from cassr_cli.evaluation.metrics.specs import Unavailable
from cassr_cli.evaluation.metrics.suite import MetricSuite, parse_metric_keys
from cassr_cli.evaluation.pictures import Picture


def test_missing_pyiqa_is_reported_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_pyiqa(name: str, *args: object, **kwargs: object):  # noqa: ANN202
        if name == "pyiqa" or name.startswith("pyiqa."):
            raise ModuleNotFoundError("No module named 'pyiqa'", name="pyiqa")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(learned.importlib, "import_module", no_pyiqa)
    for key in learned.LEARNED:
        problem = learned.check(key)
        assert isinstance(problem, Unavailable)
        assert problem.reason.startswith("pyiqa is not installed") and problem.hint == "pip install 'cassr[metrics]'"
        assert isinstance(learned.load(key, None, allow_download=True), Unavailable)  # type: ignore[arg-type]


def test_a_module_import_error_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def broken(name: str, *args: object, **kwargs: object):  # noqa: ANN202
        if name == "pyiqa":
            return object()
        if name == "pyiqa.archs.maniqa_arch":
            raise ModuleNotFoundError("No module named 'timm'", name="timm")
        if name == "pyiqa.archs.clipiqa_arch":
            raise ModuleNotFoundError("No module named 'pkg_resources'", name="pkg_resources")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(learned.importlib, "import_module", broken)
    maniqa = learned.check("maniqa")
    assert maniqa is not None and "timm" in maniqa.reason and maniqa.hint.startswith("pip install timm")
    clipiqa = learned.check("clipiqa")
    assert clipiqa is not None and "setuptools<82" in clipiqa.hint


def test_missing_weights_list_every_file_and_where_it_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyiqa")
    from pyiqa.utils import download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "torch" / "hub" / "pyiqa"))
    problem = learned.check("lpips")
    assert problem is not None and problem.reason.startswith("weights not downloaded")
    files = {f.path.name: f for f in problem.files}
    assert set(files) == {"alexnet-owt-7be5be79.pth", "LPIPS_v0.1_alex-df73285e.pth"}
    assert files["alexnet-owt-7be5be79.pth"].path.parent == tmp_path / "torch" / "hub" / "checkpoints"
    assert files["LPIPS_v0.1_alex-df73285e.pth"].url.startswith("https://huggingface.co/chaofengc/IQA-PyTorch-Weights/")
    assert "--download-metric-weights" in problem.hint
    # the files present (here: not real weights) → the check passes, and a failing load is reported too
    for f in problem.files:
        f.path.parent.mkdir(parents=True, exist_ok=True)
        f.path.write_bytes(b"not a checkpoint")
    assert learned.check("lpips") is None
    import torch

    outcome = learned.load("lpips", torch.device("cpu"), allow_download=False)
    assert isinstance(outcome, Unavailable) and outcome.reason.startswith("pyiqa could not load lpips")


def test_suite_loads_each_metric_once_and_keeps_going_without_the_unavailable_ones() -> None:
    calls: list[str] = []

    def loader(key: str, device: object, allow_download: bool):  # noqa: ANN202
        calls.append(key)
        if key == "dists":
            return Unavailable(key, "weights not downloaded: x.pth", "download it")
        if key == "lpips":
            return lambda sr, hr: float((sr - hr).abs().mean())
        return lambda sr, hr: float(sr.mean())

    keys = parse_metric_keys("lpips,psnr_y,musiq,dists", with_reference=True)
    assert keys == ("psnr_y", "lpips", "dists", "musiq")  # report order
    suite = MetricSuite.build(keys, border=0, device="cpu", loader=loader)
    assert calls == ["lpips", "dists", "musiq"]
    assert suite.available == ("psnr_y", "lpips", "musiq") and set(suite.unavailable) == {"dists"}
    hr = Picture(np.full((16, 16, 3), 100.0), False)
    sr = Picture(np.full((16, 16, 3), 110.0), False)
    values, problems = suite.score(sr, hr)
    assert values["lpips"] == pytest.approx(10 / 255) and values["musiq"] == pytest.approx(110 / 255)
    assert values["psnr_y"] == pytest.approx(10 * np.log10(255**2 / (10 * 219 / 255) ** 2))
    assert problems == {}
    no_reference, _ = suite.score(sr, None)
    assert set(no_reference) == {"musiq"}
    assert calls == ["lpips", "dists", "musiq"]  # scoring never loads again


def test_built_in_metrics_need_no_loader() -> None:
    def loader(*args: object):  # noqa: ANN202
        raise AssertionError("no learned metric asked for")

    suite = MetricSuite.build(("psnr_y", "ssim_y", "psnr_rgb", "niqe"), border=4, loader=loader)
    assert suite.unavailable == {} and suite.device is None
    small = Picture(np.zeros((20, 20, 3)), False)
    values, problems = suite.score(small, small)
    assert "niqe" in problems and "96x96" in problems["niqe"] and values["psnr_y"] == float("inf")


def test_what_pyiqa_prints_while_loading_never_reaches_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyiqa")
    import torch
    from pyiqa.utils import download_util

    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    problem = learned.check("musiq")
    assert problem is not None and len(problem.files) == 1
    problem.files[0].path.parent.mkdir(parents=True)
    problem.files[0].path.write_bytes(b"not a checkpoint")
    outcome = learned.load("musiq", torch.device("cpu"), allow_download=False)  # pyiqa prints, then fails
    assert isinstance(outcome, Unavailable) and "could not load musiq" in outcome.reason
    assert capsys.readouterr().out == ""
