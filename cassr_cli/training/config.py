"""The training configuration: frozen dataclasses read from TOML, with typed ``--set`` overrides.

A config file has a few top-level keys and one table per section::

    output_dir = "runs/adapter"
    seed = 0

    [data]
    hr_dirs = ["datasets/DIV2K_train_HR", "datasets/Flickr2K"]
    crop_size = 512
    scale = 4

    [degradation.first]          # Real-ESRGAN's defaults unless set (training/degradations.py)
    noise_range = [1.0, 30.0]

    [optim]
    learning_rate = 1e-4

    [train]
    max_steps = 20000
    batch_size = 4
    mixed_precision = "bf16"

Unknown keys are errors (with the closest valid key as a hint); values are type-checked, never
evaluated. Relative paths are relative to the working directory. The effective config is written next to
each checkpoint as ``config.toml`` (it loads back to an equal config). The training scale is
``data.scale``; the degradation section has no ``scale`` key of its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cassr_cli.errors import ConfigError
from cassr_cli.training import schema
from cassr_cli.training.degradations import DegradationConfig

MixedPrecision = Literal["no", "fp16", "bf16"]
LRSchedule = Literal["constant", "cosine", "linear"]
Stream = Literal["lr", "ref"]
GuidancePass = Literal["separate", "batched"]
SchedulerName = Literal["dpmpp-2m", "ddim", "euler", "euler-a", "unipc"]
ModelKind = Literal["multiattn", "scedit"]


def _bad(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"invalid {key} = {value!r}: expected {allowed}")


@dataclass(frozen=True)
class DataConfig:
    """Where training photos come from and how they are cut.

    Attributes:
        hr_dirs: clean high-resolution photos: folders (searched recursively), files or globs; every format
            ``cassr upscale`` reads. LR inputs are synthesised from them with the degradation model.
        paired_hr_dir, paired_lr_dir: optional folders of pre-made LR/HR pairs (used as they are, no
            synthetic degradation); files are matched by relative path and stem.
        paired_hr_suffix, paired_lr_suffix: removed from the stems before matching (e.g. ``"_HR"``/``"_LR"``,
            or ``""``/``"x4"`` for DIV2K's ``0001.png``/``0001x4.png``).
        crop_size: HR crop edge in pixels (multiple of 64 and of ``scale``); LR crops are ``crop_size / scale``.
        scale: HR size / LR size (also the degradation scale).
        hflip: random horizontal flips. rot90: random 90° rotations too.
        num_workers: DataLoader worker processes decoding images (0 = in the training process).
        max_pixels: images larger than this are refused (decompression-bomb guard).
    """

    hr_dirs: tuple[str, ...] = ()
    paired_hr_dir: str = ""
    paired_lr_dir: str = ""
    paired_hr_suffix: str = ""
    paired_lr_suffix: str = ""
    crop_size: int = 512
    scale: int = 4
    hflip: bool = True
    rot90: bool = False
    num_workers: int = 4
    max_pixels: int = 200_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.scale <= 8:
            _bad("scale", self.scale, "an integer from 1 to 8")
        if self.crop_size < 64 or self.crop_size % 64 or self.crop_size % self.scale:
            _bad("crop_size", self.crop_size, f"a multiple of 64 (and of scale {self.scale}), at least 64")
        if bool(self.paired_hr_dir) != bool(self.paired_lr_dir):
            raise ConfigError("paired_hr_dir and paired_lr_dir must be given together")
        if self.num_workers < 0:
            _bad("num_workers", self.num_workers, "0 or more")
        if self.max_pixels < 1:
            _bad("max_pixels", self.max_pixels, "a positive number")


@dataclass(frozen=True)
class ModelConfig:
    """What is trained, and the frozen models: names in the weights directory (as ``cassr
    download-weights`` installs them) or paths. ``weights_dir`` empty means ``$CASSR_WEIGHTS_DIR``, then the
    user cache directory.

    Attributes:
        kind: ``multiattn`` trains the stage-2 multi-attention adapter (``[adapter]``); ``scedit`` trains
            the SCEdit tuner of the stage-1 activation (``[scedit]``).
        base_model: the frozen text-to-image model.
        activation: the frozen stage-1 model that makes ``x_ref`` (``multiattn`` only).
    """

    kind: ModelKind = "multiattn"
    base_model: str = "sd21-base"
    activation: str = "realesrgan-x4plus"
    weights_dir: str = ""


@dataclass(frozen=True)
class AdapterConfig:
    """The trainable multi-attention adapter (DESIGN §2, stage 2 item 4).

    Attributes:
        rank: LoRA rank of the per-stream K/V deltas.
        streams: guidance streams trained (and attended to at inference).
        guidance_timestep: ``t_g`` of the cached guidance pass it is trained for (stored in the file).
        init_from: optional adapter file to start from (else zero-initialised = the zero-shot model).
    """

    rank: int = 16
    streams: tuple[Stream, ...] = ("lr", "ref")
    guidance_timestep: int = 200
    init_from: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 1024:
            _bad("rank", self.rank, "1 to 1024")
        if not self.streams or len(set(self.streams)) != len(self.streams):
            _bad("streams", self.streams, 'a non-empty list of distinct streams ("lr", "ref")')
        if not 0 <= self.guidance_timestep <= 999:
            _bad("guidance_timestep", self.guidance_timestep, "0 to 999")


@dataclass(frozen=True)
class SCEditConfig:
    """The trainable SCEdit tuner of the stage-1 activation (``model.kind = "scedit"``;
    ``cassr_cli/models/scedit.py``).

    Attributes:
        tuner_ratio: hidden width of each skip connection's SC-Tuner MLP relative to the skip's channels
            (1.0 on SD 2.1-base: 19.7 M parameters).
        hint_channels: channels of the condition encoder's stem at latent resolution.
        stem_widths: widths of the stem's stages, one per ×2 down-sampling of the VAE.
        init_from: optional tuner file to start from (else zero-initialised = the frozen base model).
    """

    tuner_ratio: float = 1.0
    hint_channels: int = 256
    stem_widths: tuple[int, ...] = (16, 32, 96)
    init_from: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tuner_ratio) and 0 < self.tuner_ratio <= 4):
            _bad("tuner_ratio", self.tuner_ratio, "a number in (0, 4]")
        if not 1 <= self.hint_channels <= 4096:
            _bad("hint_channels", self.hint_channels, "1 to 4096")
        if not self.stem_widths or any(not 1 <= w <= 4096 for w in self.stem_widths):
            _bad("stem_widths", self.stem_widths, "a non-empty list of widths from 1 to 4096")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW on the trained parameters (adapter or SCEdit tuner) and the learning-rate schedule.

    Attributes:
        learning_rate: peak learning rate (after warm-up).
        betas, eps, weight_decay: AdamW's.
        warmup_steps: linear warm-up over this many optimizer steps (``lr·(s+1)/warmup``).
        schedule: after warm-up: constant, cosine or linear decay to 0 at ``train.max_steps``.
        max_grad_norm: gradient-norm clipping (0 = off).
    """

    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    schedule: LRSchedule = "constant"
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            _bad("learning_rate", self.learning_rate, "a positive number")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            _bad("betas", self.betas, "two numbers in [0, 1)")
        if not self.eps > 0:
            _bad("eps", self.eps, "a positive number")
        if not self.weight_decay >= 0:
            _bad("weight_decay", self.weight_decay, "a number ≥ 0")
        if self.warmup_steps < 0:
            _bad("warmup_steps", self.warmup_steps, "0 or more")
        if not self.max_grad_norm >= 0:
            _bad("max_grad_norm", self.max_grad_norm, "a number ≥ 0 (0 = no clipping)")


@dataclass(frozen=True)
class TrainLoopConfig:
    """Length, batch and precision of training, and when to log and checkpoint.

    Attributes:
        max_steps: optimizer steps in total (a resumed run continues up to this).
        batch_size: samples per process per micro-batch.
        gradient_accumulation_steps: micro-batches per optimizer step.
        mixed_precision: ``no`` (fp32), ``fp16`` (CUDA) or ``bf16``: frozen models are stored in it and
            run under autocast; the adapter and optimizer stay fp32.
        gradient_checkpointing: recompute UNet activations in the backward pass (less memory, slower).
        guidance_pass: ``separate`` (guidance rows in their own forward, backward through the main rows
            only) or ``batched`` (one UNet call with per-row timesteps); same loss, see ``objective.py``.
        ema_decay: EMA of the trained weights (0 = off); checkpoints then hold the EMA weights.
        timestep_range: training timesteps are drawn uniformly from ``[min, max]``.
        prompt: text prompt of every training sample (CasSR is image-guided: empty).
        checkpoint_every: save a checkpoint every N steps (0 = only at the end).
        keep_checkpoints: keep only the newest N checkpoints (0 = all).
        log_every: report the mean loss every N steps.
        cpu: train on the CPU even when a GPU is available.
    """

    max_steps: int = 20_000
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    mixed_precision: MixedPrecision = "no"
    gradient_checkpointing: bool = False
    guidance_pass: GuidancePass = "separate"
    ema_decay: float = 0.999
    timestep_range: tuple[int, int] = (0, 999)
    prompt: str = ""
    checkpoint_every: int = 1000
    keep_checkpoints: int = 0
    log_every: int = 10
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            _bad("max_steps", self.max_steps, "1 or more")
        if self.batch_size < 1:
            _bad("batch_size", self.batch_size, "1 or more")
        if self.gradient_accumulation_steps < 1:
            _bad("gradient_accumulation_steps", self.gradient_accumulation_steps, "1 or more")
        if not 0.0 <= self.ema_decay < 1.0:
            _bad("ema_decay", self.ema_decay, "a number in [0, 1) (0 = no EMA)")
        lo, hi = self.timestep_range
        if not 0 <= lo <= hi <= 999:
            _bad("timestep_range", self.timestep_range, "[min, max] with 0 ≤ min ≤ max ≤ 999")
        for key in ("checkpoint_every", "keep_checkpoints"):
            if getattr(self, key) < 0:
                _bad(key, getattr(self, key), "0 or more")
        if self.log_every < 1:
            _bad("log_every", self.log_every, "1 or more")


@dataclass(frozen=True)
class ValidationConfig:
    """Validation images run through the real inference pipeline (``cassr upscale``'s) with the current
    adapter or tuner (EMA weights when EMA is on); PNGs go to ``output_dir/validation/step-N/``. An
    SCEdit tuner is validated as the stage-1 activation alone (``--steps 0``).

    Attributes:
        every: run every N steps (0 = off); also at the end when on.
        images: LR images: files, folders or globs.
        steps, strength, scheduler: sampling settings (stage 2's; for ``scedit`` the activation's steps
            and sampler, from pure noise).
        tile_size: diffusion and VAE tile in output pixels (multiple of 64).
    """

    every: int = 0
    images: tuple[str, ...] = ()
    steps: int = 20
    strength: float = 0.5
    scheduler: SchedulerName = "dpmpp-2m"
    tile_size: int = 512

    def __post_init__(self) -> None:
        if self.every < 0:
            _bad("every", self.every, "0 or more (0 = off)")
        if self.every and not self.images:
            raise ConfigError("validation.every is set but validation.images is empty")
        if not 1 <= self.steps <= 1000:
            _bad("steps", self.steps, "1 to 1000")
        if not 0.0 < self.strength <= 1.0:
            _bad("strength", self.strength, "greater than 0 and at most 1")
        if self.tile_size < 64 or self.tile_size % 64:
            _bad("tile_size", self.tile_size, "a multiple of 64")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``cassr train`` needs. Build it with :func:`load_train_config` or directly."""

    output_dir: str = "runs/cassr-adapter"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    scedit: SCEditConfig = field(default_factory=SCEditConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir must not be empty")
        if self.degradation.scale != self.data.scale:
            # Set through data.scale only; keep the nested config consistent for code that reads it.
            object.__setattr__(self, "degradation", dataclasses.replace(self.degradation, scale=self.data.scale))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level values (or whole sections) changed."""
        return dataclasses.replace(self, **changes)


EXCLUDE: Mapping[type, frozenset[str]] = {DegradationConfig: frozenset({"scale"})}
"""Keys the file may not set: the degradation scale follows ``data.scale``."""


def config_from_mapping(data: Mapping[str, Any], *, origin: str = "config") -> TrainConfig:
    """A validated :class:`TrainConfig` from nested TOML data."""
    return schema.from_mapping(TrainConfig, data, origin=origin, exclude=EXCLUDE)


def load_train_config(path: Path | None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read ``path`` (TOML; None = defaults only), apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type, bad value, malformed override.
    """
    data = schema.load_toml(path) if path is not None else {}
    overrides = list(overrides)
    merged = schema.apply_overrides(TrainConfig, data, overrides, exclude=EXCLUDE)
    origin = str(path) if path is not None else "defaults"
    if overrides:
        origin += " with --set overrides"
    return config_from_mapping(merged, origin=origin)


def to_toml(config: TrainConfig, *, header: str = "") -> str:
    """The config as TOML text; :func:`load_train_config` reads it back to an equal config."""
    return schema.to_toml(config, exclude=EXCLUDE, header=header)


def as_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain nested data of the config (what its TOML holds)."""
    return schema.tomllib.loads(to_toml(config))
