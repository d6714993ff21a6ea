"""Finding model files: a weights-directory name or a path, for each component a run needs.

Names are checked with the cheap install-stamp check (``weights.store.require_installed``) before any
model is loaded or any GPU is touched; paths given by the user are used as they are. The kind of
activation a file holds (a spandrel network, or an SCEdit tuner that needs the base model even with
``--steps 0``) is read from its safetensors header here, without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cassr_cli.errors import UsageError, WeightsMissingError

if TYPE_CHECKING:
    from cassr_cli.config import UpscaleConfig

MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
ADAPTER_FILE = "adapter.safetensors"
SCEDIT_FILE = "scedit.safetensors"

ActivationKind = Literal["spandrel", "scedit", "bicubic"]

BICUBIC_ACTIVATION = "bicubic"
"""``--activation bicubic``: no stage-1 model; ``x_ref`` is the bicubic-upsampled input (the paper's
ablation "without activation")."""


@dataclass(frozen=True)
class ModelPaths:
    """The files a run will load: the activation model (None for the built-in ``bicubic``) and its kind,
    and the base folder (for stage 2 or an SCEdit activation) and the adapter (stage 2)."""

    activation: Path | None
    base: Path | None = None
    adapter: Path | None = None
    activation_kind: ActivationKind = "spandrel"


def resolve_model_paths(config: UpscaleConfig) -> ModelPaths:
    """Locate (and cheaply integrity-check) every model ``config`` needs. No torch, no device.

    All models given by name are checked together first, so a missing-weights error names every model
    to download in one command rather than one per attempt.
    """
    builtin = config.activation == BICUBIC_ACTIVATION
    values = [] if builtin else [config.activation]
    if config.steps > 0:
        values += [config.base_model, *([config.adapter] if config.adapter else [])]
    names = [v for v in values if not Path(v).expanduser().exists() and not looks_like_path(v)]
    if names:
        from cassr_cli.weights.store import require_all_installed, resolve_weights_dir

        require_all_installed(resolve_weights_dir(config.weights_dir), names)
    activation = None if builtin else resolve_activation_path(config.activation, config.weights_dir)
    kind: ActivationKind = "bicubic" if activation is None else activation_kind(activation)
    if config.steps == 0 and kind != "scedit":
        return ModelPaths(activation, activation_kind=kind)
    if config.steps == 0 and not Path(config.base_model).expanduser().exists() and not looks_like_path(config.base_model):
        from cassr_cli.weights.store import require_all_installed, resolve_weights_dir

        require_all_installed(resolve_weights_dir(config.weights_dir), [config.base_model])  # the tuner's base
    base = resolve_model_folder(config.base_model, config.weights_dir, what="base model")
    adapter = None
    if config.adapter and config.steps > 0:
        adapter = resolve_adapter_path(config.adapter, config.weights_dir)
    return ModelPaths(activation, base, adapter, kind)


def activation_kind(path: Path) -> ActivationKind:
    """``scedit`` for a ``.safetensors`` file whose metadata says ``kind = "scedit"``, else ``spandrel``
    (spandrel then reports files it cannot load). Reads only the file's header.

    Raises:
        UsageError: the file is a stage-2 multi-attention adapter.
    """
    if path.suffix.lower() != ".safetensors":
        return "spandrel"
    from cassr_cli.io.safetensors_header import read_metadata

    meta = read_metadata(path) or {}
    if meta.get("kind") == "scedit":
        return "scedit"
    if meta.get("format") == "cassr-multiattn-adapter":
        raise UsageError(
            f"{path} is a multi-attention adapter for stage 2, not an activation model",
            hint="pass it with --adapter; --activation takes a spandrel model or an SCEdit tuner",
        )
    return "spandrel"


def looks_like_path(value: str) -> bool:
    """True when ``value`` is meant as a filesystem path rather than a model name."""
    return any(sep in value for sep in ("/", "\\")) or value.startswith((".", "~")) or value.lower().endswith(
        MODEL_FILE_SUFFIXES
    )


def resolve_activation_path(value: str, weights_dir: str | None) -> Path:
    """The model file for ``--activation NAME|PATH``.

    A path must exist (usage error otherwise): a model file, or an SCEdit training output folder (its
    ``scedit.safetensors``, else the newest ``checkpoint-*/scedit.safetensors``). A name must be installed
    in the weights directory (:class:`WeightsMissingError`, exit 3, with the command to run) and its
    folder must hold exactly one model file.
    """
    candidate = Path(value).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        return _model_in_folder(candidate, SCEDIT_FILE)
    if looks_like_path(value):
        raise UsageError(f"activation model file not found: {value}")
    folder = _installed_folder(value, weights_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_FILE_SUFFIXES)
    if len(files) != 1:
        raise WeightsMissingError(
            f"activation model {value!r} in {folder} should hold exactly one model file, found {len(files)}",
            hint=f"run: cassr download-weights --force {value}",
        )
    return files[0]


def resolve_model_folder(value: str, weights_dir: str | None, *, what: str) -> Path:
    """The folder for ``--base-model NAME|PATH`` (a diffusers directory)."""
    candidate = Path(value).expanduser()
    if candidate.is_dir():
        return candidate
    if looks_like_path(value):
        raise UsageError(f"{what} folder not found: {value}")
    return _installed_folder(value, weights_dir)


def resolve_adapter_path(value: str, weights_dir: str | None) -> Path:
    """The adapter file for ``--adapter NAME|PATH``: a ``.safetensors`` file, a training output folder
    (its newest ``checkpoint-*/adapter.safetensors`` or ``adapter.safetensors``), or an installed name."""
    candidate = Path(value).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        return _model_in_folder(candidate, ADAPTER_FILE)
    if looks_like_path(value):
        raise UsageError(f"adapter not found: {value}")
    return _model_in_folder(_installed_folder(value, weights_dir), ADAPTER_FILE)


def _model_in_folder(folder: Path, name: str) -> Path:
    """``folder/name``, else the newest ``folder/checkpoint-*/name`` (a training output folder)."""
    direct = folder / name
    if direct.is_file():
        return direct
    checkpoints = sorted(
        (p for p in folder.glob(f"checkpoint-*/{name}")),
        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1,
    )
    if checkpoints:
        return checkpoints[-1]
    raise UsageError(f"no {name} in {folder}")


def _installed_folder(name: str, weights_dir: str | None) -> Path:
    from cassr_cli.weights.store import require_installed, resolve_weights_dir

    return require_installed(resolve_weights_dir(weights_dir), name)
