"""SCEdit on a diffusers UNet: SC-Tuners on the skip connections and a CSC-Tuner condition encoder
(Jiang et al., "SCEdit", CVPR 2024, arXiv 2312.11392), as CasSR's stage-1 image activation.

A frozen ``UNet2DConditionModel`` hands its decoder one skip feature per entry of ``down_block_res_samples``
(the ``conv_in`` output, every down-block layer's output and every down-sampler's output: 12 for SD
1.x/2.x). The tuner changes only those features. For skip ``i`` with features ``s_i`` ``[B, C_i, h_i, w_i]``
and condition features ``c_i`` (same shape)::

    s_i' = s_i + scale · (c_i + T_i(s_i + c_i))

``T_i`` is the SC-Tuner, a per-pixel MLP ``C_i → r·C_i → C_i`` (GELU) whose last layer starts at zero.
``c_i`` comes from the CSC-Tuner condition encoder on the condition image (the up-sampled LR input,
``[B, 3, H, W]`` in [0, 1], where ``H = f·h_0`` and ``f`` is the VAE factor): a convolutional stem that
down-samples by ``f`` to ``hint_channels`` at latent resolution, then a cascade with one zero-initialised
convolution per skip (1×1, or 3×3 with stride 2 where the skip resolution halves). So an untrained
tuner gives ``c_i = 0`` and ``T_i = 0``, and the UNet's output is exactly the frozen model's.

The tuner transforms skip features, so ``down_block_additional_residuals`` (ControlNet's residuals, which
must be known before the UNet runs) cannot express it. :class:`TunedUNet` instead puts a forward
pre-hook on each up block that rewrites its ``res_hidden_states_tuple`` keyword; diffusers' forward is
not copied (docs/decisions.md).

Stored as one safetensors file (fp32 tensors) with metadata: ``kind = scedit``, the base model, the
dimensions and the skip layout it fits, and the training config. :meth:`SCEditTuner.load` refuses other
files and :meth:`SCEditTuner.check_matches` a file made for another base, with clear messages.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cassr_cli.errors import ModelLoadError

FORMAT = "cassr-scedit"
FORMAT_VERSION = "1"
KIND = "scedit"


@dataclass(frozen=True)
class SkipLayout:
    """The skip connections of a UNet, in ``down_block_res_samples`` order.

    Attributes:
        channels: channels of each skip feature.
        downsampled: per skip, whether it is at half the resolution of the previous one (never the first).
        up_groups: per up block, the skip indices its ``res_hidden_states_tuple`` holds, in tuple order.
    """

    channels: tuple[int, ...]
    downsampled: tuple[bool, ...]
    up_groups: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, unet: nn.Module) -> SkipLayout:
        """Read the layout from a diffusers ``UNet2DConditionModel`` (real or on the meta device)."""
        channels = [int(unet.conv_in.out_channels)]  # type: ignore[union-attr]
        downsampled = [False]
        for block in unet.down_blocks:  # type: ignore[union-attr]
            for resnet in block.resnets:
                channels.append(int(resnet.out_channels))
                downsampled.append(False)
            for sampler in block.downsamplers or ():
                channels.append(int(sampler.out_channels))
                downsampled.append(True)
        counts = [len(block.resnets) for block in unet.up_blocks]  # type: ignore[union-attr]
        if sum(counts) != len(channels):
            raise ModelLoadError(
                f"this UNet's up blocks take {sum(counts)} skip features but its down blocks make {len(channels)}; "
                "SCEdit needs a UNet2DConditionModel with SD 1.x/2.x-style skip connections"
            )
        groups, end = [], len(channels)
        for count in counts:  # up block k takes the last `count` skips that are left
            groups.append(tuple(range(end - count, end)))
            end -= count
        return cls(tuple(channels), tuple(downsampled), tuple(groups))

    def fingerprint(self) -> str:
        """A short hash of the layout (what a tuner file must match)."""
        text = json.dumps([self.channels, self.downsampled, self.up_groups])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TunerDimensions:
    """The sizes of an :class:`SCEditTuner` besides the skip layout.

    Attributes:
        pixel_factor: pixels per latent pixel of the base model's VAE (8 for SD 1.x/2.x); the condition
            stem down-samples by this much (a power of two).
        tuner_ratio: hidden width of each SC-Tuner MLP relative to its skip's channels (scepter's
            ``DOWN_RATIO``).
        hint_channels: channels the condition stem produces at latent resolution.
        stem_widths: widths of the stem's stages, one per ×2 down-sampling (the first ``log2(pixel_factor)``
            are used).
    """

    pixel_factor: int = 8
    tuner_ratio: float = 1.0
    hint_channels: int = 256
    stem_widths: tuple[int, ...] = (16, 32, 96)

    def __post_init__(self) -> None:
        if self.pixel_factor < 1 or self.pixel_factor & (self.pixel_factor - 1):
            raise ValueError(f"pixel_factor must be a power of two, got {self.pixel_factor}")
        if len(self.stem_widths) < self.downsamplings:
            raise ValueError(f"stem_widths needs {self.downsamplings} widths for a ×{self.pixel_factor} VAE, got {self.stem_widths}")
        if not (0 < self.tuner_ratio <= 4 and math.isfinite(self.tuner_ratio)):
            raise ValueError(f"tuner_ratio must be in (0, 4], got {self.tuner_ratio}")
        if self.hint_channels < 1 or any(w < 1 for w in self.stem_widths):
            raise ValueError("hint_channels and stem_widths must be positive")

    @property
    def downsamplings(self) -> int:
        return int(math.log2(self.pixel_factor))


class SkipTuner(nn.Module):
    """SC-Tuner of one skip: ``x ↦ W₂ GELU(W₁ x + b₁) + b₂`` per pixel, on ``[B, C, h, w]``.

    ``W₁`` is Kaiming-uniform, ``W₂`` and ``b₂`` zero (the tuner starts as the zero function).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.up = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def _conv(cin: int, cout: int, *, stride: int = 1, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)  # type: ignore[arg-type]
    return module


class ConditionEncoder(nn.Module):
    """The CSC-Tuner's condition path: image ``[B, 3, H, W]`` in [0, 1] → one feature map per skip.

    The stem (3×3 convolutions, SiLU, a stride-2 convolution per ×2 of the VAE factor) reaches latent
    resolution with ``hint_channels``; then skip ``i``'s features are ``Z_i(SiLU(features of skip i-1))``
    (the stem output for ``i = 0``), ``Z_i`` a zero-initialised 1×1 convolution, or 3×3 with stride 2 where
    the skip is down-sampled.
    """

    def __init__(self, layout: SkipLayout, dims: TunerDimensions) -> None:
        super().__init__()
        widths = list(dims.stem_widths[: dims.downsamplings])
        layers: list[nn.Module] = []
        if widths:
            layers += [_conv(3, widths[0]), nn.SiLU()]
            outs = widths[1:] + [dims.hint_channels]
            for i, (w, out) in enumerate(zip(widths, outs, strict=True)):
                layers += [_conv(w, w), nn.SiLU(), _conv(w, out, stride=2)]
                if i < len(widths) - 1:
                    layers.append(nn.SiLU())
        else:  # a VAE without down-sampling (pixel_factor 1)
            layers += [_conv(3, dims.hint_channels)]
        self.stem = nn.Sequential(*layers)
        self.act = nn.SiLU()
        previous = dims.hint_channels
        projections = []
        for channels, down in zip(layout.channels, layout.downsampled, strict=True):
            conv = _conv(previous, channels, stride=2, kernel=3) if down else _conv(previous, channels, kernel=1)
            projections.append(_zero(conv))
            previous = channels
        self.projections = nn.ModuleList(projections)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Features ``[B, C_i, h_i, w_i]`` per skip, for ``image`` ``[B, 3, H, W]`` in [0, 1]."""
        h = self.stem(image * 2.0 - 1.0)
        features = []
        for i, projection in enumerate(self.projections):
            h = projection(h if i == 0 else self.act(h))
            features.append(h)
        return features


class SCEditTuner(nn.Module):
    """SC-Tuners on every skip plus the CSC condition encoder, for one UNet layout.

    Args:
        layout: the UNet's skip layout (:meth:`SkipLayout.of`).
        dims: the tuner's own sizes.
        base_model: name of the base model it is made for (informational, stored in the file).
    """

    def __init__(self, layout: SkipLayout, dims: TunerDimensions = TunerDimensions(), *, base_model: str = "") -> None:
        super().__init__()
        self.layout = layout
        self.dims = dims
        self.base_model = base_model
        self.scale = 1.0
        self.encoder = ConditionEncoder(layout, dims)
        self.tuners = nn.ModuleList(
            SkipTuner(c, max(1, round(c * dims.tuner_ratio))) for c in layout.channels
        )

    @classmethod
    def for_unet(
        cls, unet: nn.Module, *, pixel_factor: int, base_model: str = "", **dims: Any
    ) -> SCEditTuner:
        """An untrained tuner for ``unet`` whose VAE down-samples by ``pixel_factor``; ``dims`` are the
        other :class:`TunerDimensions` fields."""
        return cls(SkipLayout.of(unet), TunerDimensions(pixel_factor=pixel_factor, **dims), base_model=base_model)

    def encode(self, condition: torch.Tensor) -> list[torch.Tensor]:
        """Condition features per skip for ``condition`` ``[B, 3, H, W]`` in [0, 1] (``H, W`` multiples of
        ``pixel_factor`` times the UNet's latent multiple), in the tuner's dtype."""
        dtype = next(self.parameters()).dtype
        return self.encoder(condition.to(dtype))

    def tune(self, index: int, skip: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """``s + scale·(c + T(s + c))`` for skip ``index`` (computed in the tuner's dtype, returned in the
        skip's)."""
        if feature.shape[-2:] != skip.shape[-2:] or feature.shape[:2] != skip.shape[:2]:
            raise ValueError(
                f"condition features {tuple(feature.shape)} do not match skip {index} {tuple(skip.shape)}: the "
                f"condition image must be {self.dims.pixel_factor}× the latent size, one per UNet row"
            )
        dtype = feature.dtype
        mixed = skip.to(dtype) + feature
        control = feature + self.tuners[index](mixed)
        return skip + (self.scale * control).to(skip.dtype)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- compatibility ------------------------------------------------------------------------------
    def check_matches(self, unet: nn.Module, pixel_factor: int, *, source: str = "SCEdit tuner") -> None:
        """Raise :class:`ModelLoadError` unless ``unet``'s skip layout and the VAE factor are the tuner's."""
        layout = SkipLayout.of(unet)
        if layout != self.layout or pixel_factor != self.dims.pixel_factor:
            made_for = self.base_model or "another base model"
            detail = (
                f"its skips {list(self.layout.channels)} at ×{self.dims.pixel_factor}, the UNet's "
                f"{list(layout.channels)} at ×{pixel_factor}"
            )
            raise ModelLoadError(
                f"{source} was made for {made_for!r} and does not fit this base model ({detail})",
                hint="use the base model the tuner was trained on (--base-model), or train one for this base",
            )

    # --- persistence --------------------------------------------------------------------------------
    def metadata(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "base_model": self.base_model,
            "dimensions": json.dumps(asdict(self.dims)),
            "skip_layout": json.dumps(asdict(self.layout)),
            "fingerprint": self.layout.fingerprint(),
            "parameters": str(self.parameter_count()),
        }
        meta.update(extra or {})
        return meta

    def save(self, path: Path, *, extra: Mapping[str, str] | None = None) -> None:
        """Write the tuner as one safetensors file (fp32 tensors + metadata), atomically. ``extra`` adds
        metadata (e.g. ``training_config``, ``trained_steps``)."""
        from safetensors.torch import save

        from cassr_cli.io.atomic import write_atomic

        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        write_atomic(path, save(tensors, metadata=self.metadata(extra)))

    @classmethod
    def load(cls, path: Path) -> tuple[SCEditTuner, dict[str, str]]:
        """Read a tuner file; returns the tuner (fp32, CPU) and its metadata.

        Raises:
            ModelLoadError: not an SCEdit tuner file, unsupported version, or inconsistent tensors.
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        except Exception as err:
            raise ModelLoadError(f"cannot read SCEdit tuner {path}: {err}") from err
        if meta.get("kind") != KIND or meta.get("format") != FORMAT:
            raise ModelLoadError(f"{path} is not a cassr SCEdit tuner (kind={meta.get('kind')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(f"{path} has SCEdit format version {meta.get('format_version')}; this cassr reads {FORMAT_VERSION}")
        try:
            raw = json.loads(meta["skip_layout"])
            layout = SkipLayout(
                tuple(int(c) for c in raw["channels"]),
                tuple(bool(d) for d in raw["downsampled"]),
                tuple(tuple(int(i) for i in g) for g in raw["up_groups"]),
            )
            d = json.loads(meta["dimensions"])
            dims = TunerDimensions(
                pixel_factor=int(d["pixel_factor"]),
                tuner_ratio=float(d["tuner_ratio"]),
                hint_channels=int(d["hint_channels"]),
                stem_widths=tuple(int(w) for w in d["stem_widths"]),
            )
            tuner = cls(layout, dims, base_model=meta.get("base_model", ""))
            tuner.load_state_dict(tensors, strict=True)
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise ModelLoadError(f"SCEdit tuner {path} is inconsistent: {err}") from err
        return tuner, meta


class TunedUNet(nn.Module):
    """A frozen ``UNet2DConditionModel`` with an :class:`SCEditTuner` on its skip connections.

    Calling it with a ``condition`` image runs the UNet with tuned skips; the UNet called directly (e.g.
    by stage 2, which shares it) is untouched, since the hooks do nothing outside this module's call.
    :meth:`close` removes the hooks.

    Args:
        unet: the frozen UNet (not copied; forward pre-hooks are put on its up blocks).
        tuner: the tuner, matching ``unet``'s skip layout.
    """

    def __init__(self, unet: nn.Module, tuner: SCEditTuner) -> None:
        super().__init__()
        if SkipLayout.of(unet) != tuner.layout:
            raise ModelLoadError("the SCEdit tuner does not fit this UNet's skip connections")
        self.unet = unet
        self.tuner = tuner
        self._features: Sequence[torch.Tensor] | None = None
        self._handles = [
            block.register_forward_pre_hook(functools.partial(self._tune_skips, group), with_kwargs=True)
            for group, block in zip(tuner.layout.up_groups, unet.up_blocks, strict=True)  # type: ignore[arg-type]
        ]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        condition: torch.Tensor,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The UNet's prediction ``[B, 4, h, w]`` (UNet dtype) for ``sample`` at ``timestep`` with skips
        tuned by ``condition`` ``[B, 3, f·h, f·w]`` in [0, 1]; ``sample`` and ``encoder_hidden_states``
        are cast to the UNet's dtype; ``kwargs`` go to the UNet."""
        if condition.shape[0] != sample.shape[0]:
            raise ValueError(f"{condition.shape[0]} condition images for {sample.shape[0]} UNet rows")
        dtype = self.unet.dtype  # type: ignore[union-attr]
        self._features = self.tuner.encode(condition)
        try:
            return self.unet(
                sample.to(dtype), timestep, encoder_hidden_states=encoder_hidden_states.to(dtype), **kwargs
            ).sample
        finally:
            self._features = None

    def _tune_skips(self, group: tuple[int, ...], module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if self._features is None:
            return None
        skips = kwargs["res_hidden_states_tuple"]
        kwargs["res_hidden_states_tuple"] = tuple(
            self.tuner.tune(i, s, self._features[i]) for i, s in zip(group, skips, strict=True)
        )
        return args, kwargs

    def close(self) -> None:
        """Remove the hooks from the UNet."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
