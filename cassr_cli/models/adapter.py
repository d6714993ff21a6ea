"""The multi-attention adapter: per-stream LoRA deltas on the guidance K/V projections and learned
per-layer logit biases, for every self-attention (``attn1``) layer of a UNet (DESIGN §2, stage 2 item 4).

For layer ℓ and guidance stream s with normalised hidden states ``h_s`` ``[N, L, C]``::

    K_s = W_k h_s + (h_s A_k^{s,ℓ}ᵀ) B_k^{s,ℓ}ᵀ        V_s = W_v h_s + (h_s A_v^{s,ℓ}ᵀ) B_v^{s,ℓ}ᵀ
    logit bias of stream s = log(user weight_s) + β^{s,ℓ}

``B`` and ``β`` start at zero, so an untrained adapter reproduces the zero-shot model exactly.

Stored as one safetensors file with metadata (format, version, base model, rank, streams, guidance mode,
``t_g`` and a fingerprint of the layer shapes); :meth:`MultiAttentionAdapter.load` refuses a file made
for a different UNet with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from cassr_cli.errors import ModelLoadError

FORMAT = "cassr-multiattn-adapter"
FORMAT_VERSION = "1"
STREAMS: tuple[str, ...] = ("lr", "ref")


def self_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """``{processor key → Attention module}`` for every ``attn1`` of ``unet``, in a stable order.

    Keys are diffusers' processor names, e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor``.
    """
    layers = {}
    modules = dict(unet.named_modules())
    for key in unet.attn_processors:  # type: ignore[attr-defined]
        if key.endswith("attn1.processor"):
            layers[key] = modules[key.removesuffix(".processor")]
    return layers


def _module_key(layer: str) -> str:
    return layer.removesuffix(".processor").replace(".", "__")


class LowRankDelta(nn.Module):
    """``x ↦ (x Aᵀ) Bᵀ`` with ``A`` ``[rank, in]`` (Kaiming-uniform) and ``B`` ``[out, rank]`` (zeros)."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down.to(x.dtype).t()) @ self.up.to(x.dtype).t()


class LayerAdapter(nn.Module):
    """The adapter's parameters for one ``attn1`` layer: per stream a K delta, a V delta and a bias."""

    def __init__(self, in_features: int, kv_features: int, rank: int, streams: Sequence[str]) -> None:
        super().__init__()
        self.streams = tuple(streams)
        self.key = nn.ModuleDict({s: LowRankDelta(in_features, kv_features, rank) for s in self.streams})
        self.value = nn.ModuleDict({s: LowRankDelta(in_features, kv_features, rank) for s in self.streams})
        self.bias = nn.Parameter(torch.zeros(len(self.streams)))

    def stream_bias(self, stream: str) -> torch.Tensor:
        """β for ``stream`` (a 0-d tensor)."""
        return self.bias[self.streams.index(stream)]


class MultiAttentionAdapter(nn.Module):
    """All layers' adapters plus the metadata needed to check compatibility.

    Args:
        layer_shapes: ``{processor key: (in_features, kv_features)}`` of the UNet's attn1 layers.
        rank: LoRA rank.
        streams: guidance streams the adapter has parameters for.
        base_model: a name of the base model it was made for (informational).
    """

    def __init__(
        self,
        layer_shapes: Mapping[str, tuple[int, int]],
        *,
        rank: int = 16,
        streams: Sequence[str] = STREAMS,
        base_model: str = "",
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be ≥ 1, got {rank}")
        self.rank = rank
        self.streams = tuple(streams)
        self.base_model = base_model
        self.layer_shapes = dict(layer_shapes)
        self.layers = nn.ModuleDict(
            {_module_key(k): LayerAdapter(i, o, rank, self.streams) for k, (i, o) in self.layer_shapes.items()}
        )

    @classmethod
    def for_unet(
        cls, unet: nn.Module, *, rank: int = 16, streams: Sequence[str] = STREAMS, base_model: str = ""
    ) -> MultiAttentionAdapter:
        """An untrained adapter matching ``unet``'s self-attention layers."""
        shapes = {k: (m.to_k.in_features, m.to_k.out_features) for k, m in self_attention_layers(unet).items()}
        return cls(shapes, rank=rank, streams=streams, base_model=base_model)

    def layer(self, processor_key: str) -> LayerAdapter:
        """The adapter of one attn1 layer."""
        return self.layers[_module_key(processor_key)]  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A short hash of the layer names and shapes (what must match the UNet)."""
        text = json.dumps(sorted(self.layer_shapes.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check_matches(self, unet: nn.Module, *, source: str = "adapter") -> None:
        """Raise :class:`ModelLoadError` unless ``unet``'s attn1 layers are exactly the adapter's."""
        shapes = {k: (m.to_k.in_features, m.to_k.out_features) for k, m in self_attention_layers(unet).items()}
        if shapes != self.layer_shapes:
            missing = sorted(set(self.layer_shapes) - set(shapes))
            extra = sorted(set(shapes) - set(self.layer_shapes))
            differ = sorted(k for k in set(shapes) & set(self.layer_shapes) if shapes[k] != self.layer_shapes[k])
            detail = (
                f"{len(missing)} of its layers missing from the UNet, {len(extra)} UNet layers without "
                f"adapter weights, {len(differ)} with other shapes"
            )
            raise ModelLoadError(
                f"{source} does not fit this base model ({detail}); it was made for {self.base_model or 'another model'!r}",
                hint="use the base model the adapter was trained on (--base-model), or train one for this base",
            )

    # --- persistence --------------------------------------------------------------------------------
    def metadata(self, *, mode: str, guidance_timestep: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model,
            "rank": str(self.rank),
            "streams": ",".join(self.streams),
            "mode": mode,
            "guidance_timestep": str(guidance_timestep),
            "layer_shapes": json.dumps(self.layer_shapes),
            "fingerprint": self.fingerprint(),
        }
        meta.update(extra or {})
        return meta

    def save(self, path: Path, *, mode: str = "cached", guidance_timestep: int = 200, extra: Mapping[str, str] | None = None) -> None:
        """Write the adapter as one safetensors file (fp32 weights + metadata), atomically."""
        from safetensors.torch import save

        from cassr_cli.io.atomic import write_atomic

        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        data = save(tensors, metadata=self.metadata(mode=mode, guidance_timestep=guidance_timestep, extra=extra))
        write_atomic(path, data)

    @classmethod
    def load(cls, path: Path) -> tuple[MultiAttentionAdapter, dict[str, str]]:
        """Read an adapter file; returns the adapter (fp32, CPU) and its metadata.

        Raises:
            ModelLoadError: not a cassr adapter, unsupported version, or inconsistent tensors.
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        except Exception as err:
            raise ModelLoadError(f"cannot read adapter {path}: {err}") from err
        if meta.get("format") != FORMAT:
            raise ModelLoadError(f"{path} is not a cassr multi-attention adapter (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelLoadError(f"{path} has adapter format version {meta.get('format_version')}; this cassr reads {FORMAT_VERSION}")
        try:
            shapes = {k: tuple(v) for k, v in json.loads(meta["layer_shapes"]).items()}
            adapter = cls(
                shapes,  # type: ignore[arg-type]
                rank=int(meta["rank"]),
                streams=tuple(s for s in meta["streams"].split(",") if s),
                base_model=meta.get("base_model", ""),
            )
            adapter.load_state_dict(tensors, strict=True)
        except (KeyError, ValueError, RuntimeError) as err:
            raise ModelLoadError(f"adapter {path} is inconsistent: {err}") from err
        return adapter, meta
