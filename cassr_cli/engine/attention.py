"""Multiple attention: the attention processors that let the main latent attend to guidance streams.

In every self-attention layer (``attn1``) the queries of the noisy latent attend to the concatenation of
their own keys/values and one key/value set per guidance stream ``s`` (``lr``, ``ref``)::

    K = [W_k h_x ; K_lr ; K_ref]     V = [W_v h_x ; V_lr ; V_ref]     + logit bias β_s per stream

where ``K_s, V_s`` come from the same frozen UNet run on the guidance latent ``g_s`` (plus the adapter's
LoRA deltas). The processor computes the layer's projections and hands them to the *guidance pass* of the
UNet call (``cross_attention_kwargs={"guidance": pass}``, see ``engine/guidance.py``), which knows the
call's row layout and where guidance K/V are written and read; the processor offers the three pieces the
passes combine: :meth:`MultiAttentionProcessor.attend` (plain attention),
:meth:`~MultiAttentionProcessor.guidance_kv` (guidance K/V with adapter deltas) and
:meth:`~MultiAttentionProcessor.attend_main` (main rows over their own and their tile's guidance K/V).
Without a pass (or without streams) the layer is the plain frozen attention.

Per-stream biases never materialise an ``Lq × Lk`` mask: when any bias is non-zero, one extra head
channel carries it (``q' = [q, 1, 0…]``, ``k'_s = [k_s, β_s·√d, 0…]``, ``v' = [v, 0…]``, padded to a
multiple of 8 so fused kernels still apply); when all are zero the plain concatenation is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cassr_cli.errors import DeviceUnavailableError

if TYPE_CHECKING:
    from cassr_cli.engine.guidance import GuidancePass
    from cassr_cli.models.adapter import LayerAdapter, MultiAttentionAdapter

Backend = Literal["sdpa", "xformers"]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: Backend) -> torch.Tensor:
    """Scaled dot-product attention on ``[B, H, L, d]`` tensors with an explicit ``scale``."""
    if backend == "xformers":
        import xformers.ops as xops

        out = xops.memory_efficient_attention(
            q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), scale=scale
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def attend_with_stream_bias(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_bias: torch.Tensor,
    scale: float,
    backend: Backend,
) -> torch.Tensor:
    """Attention whose logits get a per-key additive bias, without an ``Lq × Lk`` mask.

    Args:
        q: ``[B, H, Lq, d]``; k, v: ``[B, H, Lk, d]``.
        key_bias: ``[Lk]`` or ``[B, 1, Lk]`` logit bias (added after scaling).
    """
    d = q.shape[-1]
    extra = (-(d + 1)) % 8 + 1  # the bias channel plus zeros up to a multiple of 8
    q_pad = q.new_zeros(*q.shape[:-1], extra)
    q_pad[..., 0] = 1.0
    k_pad = k.new_zeros(*k.shape[:-1], extra)
    bias = key_bias.to(k.dtype)
    if bias.dim() == 1:
        bias = bias.view(1, 1, -1)
    k_pad[..., 0] = (bias / scale).expand(k.shape[0], k.shape[1], -1)
    v_pad = v.new_zeros(*v.shape[:-1], extra)
    out = attend(torch.cat([q, q_pad], -1), torch.cat([k, k_pad], -1), torch.cat([v, v_pad], -1), scale, backend)
    return out[..., :d]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, H·d]`` → ``[B, H, L, d]``."""
    b, length, inner = x.shape
    return x.view(b, length, heads, inner // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d]`` → ``[B, L, H·d]``."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class MultiAttentionProcessor(nn.Module):
    """Processor for one ``attn1`` layer (see the module docstring).

    Args:
        name: the layer's processor key (the bank's key for this layer).
        scale: the layer's attention scale (``attn.scale``, ``1/√d`` by default).
        adapter: this layer's adapter parameters, or None (zero-shot).
        backend: attention kernel.
    """

    def __init__(self, name: str, scale: float, adapter: LayerAdapter | None = None, backend: Backend = "sdpa") -> None:
        super().__init__()
        self.name = name
        self.scale = float(scale)
        self.adapter = adapter
        self.backend = backend

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        guidance: GuidancePass | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError("multi-attention supports the transformer-block self-attention of SD 1.x/2.x UNets")
        if attention_mask is not None:
            raise NotImplementedError("multi-attention does not take an attention mask")
        residual = hidden_states
        heads = attn.heads
        q = _heads(attn.to_q(hidden_states), heads)
        k = _heads(attn.to_k(hidden_states), heads)
        v = _heads(attn.to_v(hidden_states), heads)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if guidance is None or not guidance.streams:
            out = self.attend(q, k, v)
        else:
            out = guidance.attend(self, q, k, v, hidden_states)
        out = _merge(out).to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    forward = __call__  # torch 2.5's TorchDynamo traces `forward` when a module is called, not `__call__`

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Plain attention of rows ``[B, H, L, d]`` over their own keys (the frozen layer)."""
        return attend(q, k, v, self.scale, self.backend)

    def guidance_kv(
        self, hidden: torch.Tensor, k: torch.Tensor, v: torch.Tensor, streams: tuple[str, ...], tiles: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Guidance K/V ``[S, T, H, L, d]`` of guidance rows ``[S·T, …]`` (stream-major), adding the
        adapter's deltas computed from the rows' input ``hidden`` ``[S·T, L, C]``."""
        s, t = len(streams), tiles
        heads = k.shape[1]
        if self.adapter is not None:
            k = k.clone()
            v = v.clone()
            for i, stream in enumerate(streams):
                rows = slice(i * t, (i + 1) * t)
                h = hidden[rows]
                k[rows] += _heads(self.adapter.key[stream](h), heads)
                v[rows] += _heads(self.adapter.value[stream](h), heads)
        return k.reshape(s, t, *k.shape[1:]), v.reshape(s, t, *v.shape[1:])

    def attend_main(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        gk: torch.Tensor,
        gv: torch.Tensor,
        streams: tuple[str, ...],
        log_weights: tuple[float, ...],
        cfg: int,
    ) -> torch.Tensor:
        """Main rows ``[cfg·T, H, L, d]`` (ordered (cfg, tile)) attend to their own K/V plus their tile's
        guidance K/V ``gk, gv`` ``[S, T, H, Lg, d]``, with logit bias ``log_weights[s]`` (+ the adapter's β)."""
        scale = self.scale
        # [S, T, H, L, d] → per main row (cfg, tile): [cfg·T, H, S·L, d]
        s, t, h, length, d = gk.shape
        gk_rows = gk.permute(1, 2, 0, 3, 4).reshape(t, h, s * length, d).repeat(cfg, 1, 1, 1)
        gv_rows = gv.permute(1, 2, 0, 3, 4).reshape(t, h, s * length, d).repeat(cfg, 1, 1, 1)
        keys = torch.cat([k, gk_rows.to(k.dtype)], dim=2)
        values = torch.cat([v, gv_rows.to(v.dtype)], dim=2)
        learned = None
        if self.adapter is not None:
            learned = torch.stack([self.adapter.stream_bias(name) for name in streams])
        if learned is None and all(b == 0.0 for b in log_weights):
            return attend(q, keys, values, scale, self.backend)
        # Built from Python floats with torch.full: torch.tensor(biases, device=cuda) would be a host→device
        # copy, i.e. a host synchronisation in every attn1 layer of every UNet call.
        own = k.shape[2]
        f32 = torch.float32
        key_bias = torch.cat(
            [torch.zeros(own, device=q.device, dtype=f32)]
            + [torch.full((length,), float(b), device=q.device, dtype=f32) for b in log_weights]
        )
        if learned is not None:
            learned_bias = learned.to(q.device, f32).repeat_interleave(length)
            key_bias = key_bias + torch.cat([key_bias.new_zeros(own), learned_bias])
        return attend_with_stream_bias(q, keys, values, key_bias, scale, self.backend)


class PassthroughProcessor(nn.Module):
    """Standard attention for the layers multiple attention leaves alone (``attn2``), accepting and
    ignoring the ``guidance`` keyword so diffusers does not warn about it on every call."""

    def __init__(self, backend: Backend = "sdpa") -> None:
        super().__init__()
        self.backend = backend
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0() if backend == "sdpa" else _xformers_processor()

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        guidance: GuidancePass | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    forward = __call__  # see MultiAttentionProcessor.forward


def _xformers_processor() -> object:
    from diffusers.models.attention_processor import XFormersAttnProcessor

    return XFormersAttnProcessor()


def check_backend(backend: Backend) -> None:
    """Raise :class:`DeviceUnavailableError` when ``backend`` cannot run here."""
    if backend == "xformers":
        import importlib.util

        if importlib.util.find_spec("xformers") is None:
            raise DeviceUnavailableError(
                "--attention xformers was requested but xformers is not installed",
                hint="pip install 'cassr[xformers]', or use --attention sdpa (the default)",
            )
    elif not hasattr(F, "scaled_dot_product_attention"):  # pragma: no cover - torch < 2.0
        raise DeviceUnavailableError("this PyTorch has no scaled_dot_product_attention; upgrade torch")


def install_processors(
    unet: nn.Module, adapter: MultiAttentionAdapter | None = None, backend: Backend = "sdpa"
) -> dict[str, object]:
    """Put a :class:`MultiAttentionProcessor` on every ``attn1`` (and a passthrough on the other attention
    layers) of ``unet``. Returns the previous processors for :func:`restore_processors`.

    A fresh dict is built for diffusers' ``set_attn_processor`` (it consumes the dict it is given).
    """
    check_backend(backend)
    previous = dict(unet.attn_processors)  # type: ignore[attr-defined]
    modules = dict(unet.named_modules())
    fresh: dict[str, object] = {}
    for key in previous:
        if key.endswith("attn1.processor"):
            scale = modules[key.removesuffix(".processor")].scale
            fresh[key] = MultiAttentionProcessor(key, scale, adapter.layer(key) if adapter is not None else None, backend)
        else:
            fresh[key] = PassthroughProcessor(backend)
    unet.set_attn_processor(fresh)  # type: ignore[attr-defined]
    return previous


def restore_processors(unet: nn.Module, previous: dict[str, object]) -> None:
    """Undo :func:`install_processors`."""
    unet.set_attn_processor(dict(previous))  # type: ignore[attr-defined]
