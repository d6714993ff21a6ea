"""Learned metrics through pyiqa (IQA-PyTorch), the library the diffusion-SR literature reports with.

LPIPS (AlexNet, v0.1), DISTS, MUSIQ (KonIQ), MANIQA (KonIQ) and CLIPIQA are pyiqa's default models of
those names, so the numbers are comparable with StableSR, SeeSR, OSEDiff and the like. Nothing is
re-implemented here; this module only decides whether a metric *can* run and builds it:

* :func:`check` (no network, no model load): pyiqa and the metric's own imports are present, and every
  weight file pyiqa would fetch is already in its cache. Otherwise the metric is
  :class:`~cassr_cli.evaluation.metrics.specs.Unavailable`, with the reason and how to get what is
  missing (the exact URLs and cache paths).
* :func:`load`: builds the metric once, on the given device. pyiqa downloads missing weights only when
  downloads are allowed (``cassr eval --download-metric-weights``). pyiqa prints while loading; that
  text goes to the debug log, never to stdout.

pyiqa is an optional dependency (``pip install 'cassr[metrics]'``) under its own licence (PolyForm
Noncommercial 1.0.0 at 0.1.16; see docs/quality.md).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cassr_cli.evaluation.metrics.specs import METRICS, Unavailable

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'cassr[metrics]'"
DOWNLOAD_HINT = "rerun once with --download-metric-weights (needs internet), or download each file listed in metrics.json to its path"

LEARNED = ("lpips", "dists", "musiq", "maniqa", "clipiqa")
"""The metrics served by pyiqa (the keys are also pyiqa's metric names)."""

_ARCH_MODULE = {
    "lpips": "lpips_arch",
    "dists": "dists_arch",
    "musiq": "musiq_arch",
    "maniqa": "maniqa_arch",
    "clipiqa": "clipiqa_arch",
}

_PACKAGES = {"clip": "openai-clip", "skimage": "scikit-image", "cv2": "opencv-python-headless"}
"""PyPI names of modules whose import name differs."""


@dataclass(frozen=True)
class WeightFile:
    """A file a learned metric needs: where it comes from and where its library looks for it."""

    url: str
    path: Path
    present: bool
    label: str = ""

    @property
    def name(self) -> str:
        """How the file is named in messages (its file name, or the Hugging Face repository)."""
        return self.label or self.path.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "path": str(self.path), "present": self.present}


ScoreFn = Callable[["torch.Tensor", "torch.Tensor | None"], float]
"""``score(sr, hr)``: ``sr``/``hr`` ``[1, 3, H, W]`` float32 in [0, 1] on the metric's device (``hr`` is
None for no-reference metrics) → one number."""


def check(key: str) -> Unavailable | None:
    """Whether ``key`` can run offline right now: None if so, else why not and how to fix it."""
    if key not in LEARNED:
        raise KeyError(key)
    try:
        importlib.import_module("pyiqa")
    except Exception as err:  # ImportError, or a broken install
        return Unavailable(key, f"pyiqa is not installed ({_short(err)})", INSTALL_HINT)
    try:
        importlib.import_module(f"pyiqa.archs.{_ARCH_MODULE[key]}")
    except Exception as err:
        return Unavailable(key, f"pyiqa's {key} cannot be imported ({_short(err)})", _import_hint(err))
    files = weight_files(key)
    missing = [f for f in files if not f.present]
    if missing:
        names = ", ".join(f.name for f in missing)
        return Unavailable(key, f"weights not downloaded: {names}", DOWNLOAD_HINT, files=tuple(files))
    return None


def load(key: str, device: torch.device, *, allow_download: bool) -> ScoreFn | Unavailable:
    """Build metric ``key`` on ``device`` (once per run), or say why it cannot run."""
    problem = check(key)
    if problem is not None and not (allow_download and problem.files):
        return problem
    import pyiqa
    import torch

    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # pyiqa prints "Loading pretrained model …" to stdout
            metric = pyiqa.create_metric(key, device=device, as_loss=False)
    except Exception as err:
        logger.debug("pyiqa output while loading %s:\n%s", key, log.getvalue())
        hint = DOWNLOAD_HINT if problem is not None else "rerun with -vv for the details"
        return Unavailable(key, f"pyiqa could not load {key}: {_short(err)}", hint, files=tuple(weight_files(key)))
    logger.debug("pyiqa output while loading %s:\n%s", key, log.getvalue())
    metric.eval()
    reference = METRICS[key].reference

    def score(sr: torch.Tensor, hr: torch.Tensor | None) -> float:
        with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()):
            value = metric(sr, hr) if reference else metric(sr)
        return float(value.reshape(-1)[0])

    return score


def weight_files(key: str) -> list[WeightFile]:
    """Every file pyiqa fetches for ``key`` with its default settings, and whether it is cached.

    Raises:
        ImportError: pyiqa (or the metric's module) is not importable.
    """
    import torch
    from pyiqa.utils import download_util

    hub = Path(torch.hub.get_dir())
    pyiqa_dir = Path(download_util.DEFAULT_CACHE_DIR)
    arch = importlib.import_module(f"pyiqa.archs.{_ARCH_MODULE[key]}")
    out: list[WeightFile] = []

    def pyiqa_file(url: str) -> None:
        out.append(_file(url, pyiqa_dir / os.path.basename(url)))

    def torchvision_file(url: str) -> None:
        out.append(_file(url, hub / "checkpoints" / os.path.basename(url)))

    if key == "lpips":
        from torchvision.models import AlexNet_Weights

        torchvision_file(AlexNet_Weights.IMAGENET1K_V1.url)
        pyiqa_file(arch.default_model_urls["0.1_alex"])
    elif key == "dists":
        from torchvision.models import VGG16_Weights

        torchvision_file(VGG16_Weights.IMAGENET1K_V1.url)
        pyiqa_file(arch.default_model_urls["url"])
    elif key == "musiq":
        pyiqa_file(arch.default_model_urls["koniq10k"])
    elif key == "maniqa":
        out.append(_timm_file("vit_base_patch8_224"))
        pyiqa_file(arch.default_model_urls["koniq"])
    elif key == "clipiqa":
        from pyiqa.archs import clip_model

        url = clip_model._MODELS["RN50"]
        out.append(_file(url, hub / "clip" / os.path.basename(url)))
    return out


def _file(url: str, path: Path) -> WeightFile:
    return WeightFile(url, path, path.is_file() and path.stat().st_size > 0)


def _timm_file(model: str) -> WeightFile:
    """The Hugging Face file timm loads for ``model``'s default pretrained tag."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(model).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return WeightFile(f"https://huggingface.co/{repo}/resolve/main/{filename}", Path(cached), True, repo)
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    return WeightFile(f"https://huggingface.co/{repo}/resolve/main/model.safetensors", folder, False, f"{repo} (Hugging Face)")


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _import_hint(err: BaseException) -> str:
    missing = getattr(err, "name", None)
    if missing == "pkg_resources":  # openai-clip imports it; setuptools ≥ 82 no longer ships it
        return "pip install 'setuptools<82' (the CLIP package pyiqa uses imports pkg_resources)"
    if missing:
        package = _PACKAGES.get(missing.split(".")[0], missing.split(".")[0])
        return f"pip install {package} (or {INSTALL_HINT})"
    return INSTALL_HINT
