"""Stage 2's per-tile model: the frozen UNet with multiple-attention guidance and classifier-free guidance.

A :class:`MultiAttentionModel` is a :class:`~cassr_cli.engine.tiled_denoiser.TileModel`: for a batch of
latent tiles it builds the UNet rows — ``cfg`` copies of the tiles (CFG's unconditional rows first) and,
when guidance is computed in the same call, one row per guidance stream and tile — picks the guidance pass
(``engine/guidance.py``) and combines the CFG rows of the output.

When the guidance K/V are computed is the :class:`GuidanceSettings`' business:

* ``timestep = t_g`` (cached guidance): one guidance pass per tile batch at the fixed ``t_g`` on the first
  step writes the bank; every step's main rows read it;
* ``timestep = None, refresh = 1`` (per-step guidance): every call carries the guidance rows noised to the
  current ``t`` next to the main rows (one :class:`~cassr_cli.engine.guidance.JointPass`);
* ``timestep = None, refresh = k > 1``: the joint call every ``k``-th step also leaves the K/V in the bank,
  and the steps between read them (guidance at most ``k − 1`` steps stale).

The crops a call needs from the tiled denoiser: ``crops[s]`` (the guidance latent of stream ``s``) and
``crops[noise_key(s)]`` (its noise), for every active stream.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cassr_cli.engine.guidance import BankSlot, GuidanceBank, JointPass, ReadPass, ScratchBank, WritePass
from cassr_cli.engine.sampling import noise_coefficients
from cassr_cli.engine.tiled_denoiser import DenoiseStats, TileBatch


def noise_key(stream: str) -> str:
    """The condition name of a stream's noise."""
    return f"noise:{stream}"


@dataclass(frozen=True)
class TextConditioning:
    """Prompt embeddings ``[1, 77, D]`` (compute dtype, device): ``cond`` for the main rows, ``uncond``
    for CFG's unconditional rows (None without CFG) and ``guide`` (the empty prompt) for guidance rows."""

    cond: torch.Tensor
    guide: torch.Tensor
    uncond: torch.Tensor | None = None


@dataclass(frozen=True)
class GuidanceSettings:
    """Which guidance streams the main rows attend to, with which weights, computed when.

    Attributes:
        streams: active guidance streams (``lr``, ``ref``), in row order.
        log_weights: logit bias ``log(weight)`` per active stream.
        timestep: ``t_g`` of cached guidance (one pass at a fixed timestep), or None (at the current step's).
        refresh: without ``timestep``: steps between guidance passes (1 = every step).
    """

    streams: tuple[str, ...] = ("lr", "ref")
    log_weights: tuple[float, ...] = (0.0, 0.0)
    timestep: int | None = None
    refresh: int = 1

    def __post_init__(self) -> None:
        if len(self.log_weights) != len(self.streams):
            raise ValueError("one log weight per stream")
        if self.refresh < 1:
            raise ValueError(f"refresh must be ≥ 1, got {self.refresh}")

    @property
    def keeps_bank(self) -> bool:
        """Whether guidance K/V outlive the call that wrote them (cached, or refreshed every k > 1 steps)."""
        return bool(self.streams) and (self.timestep is not None or self.refresh > 1)

    def rows_per_tile(self, cfg: int) -> int:
        """The most UNet rows one tile takes in a call: ``cfg`` main rows, plus one guidance row per stream
        in the calls that compute guidance with the step (per-step, refreshed); a cached pass's calls carry
        the guidance rows alone."""
        if self.timestep is not None:
            return max(cfg, len(self.streams))
        return cfg + len(self.streams)

    def passes(self, steps: int) -> int:
        """Guidance passes per tile over ``steps`` steps."""
        if not self.streams:
            return 0
        return 1 if self.timestep is not None else -(-steps // self.refresh)


class MultiAttentionModel:
    """The tile model of stage 2 (module docstring).

    Args:
        unet: the base UNet with multi-attention processors installed.
        text: prompt embeddings.
        guidance: streams, weights and schedule of the guidance passes.
        alphas_cumprod: the scheduler's ``ᾱ`` ``[T]`` (float32, on the device).
        dtype: UNet compute dtype.
        guidance_scale: classifier-free guidance scale (1 = off).
        bank: where guidance K/V live between calls (:class:`~cassr_cli.engine.guidance.ScratchBank` when
            they never do).
        stats: counters to fill.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        text: TextConditioning,
        guidance: GuidanceSettings,
        *,
        alphas_cumprod: torch.Tensor,
        dtype: torch.dtype,
        guidance_scale: float = 1.0,
        bank: GuidanceBank | None = None,
        stats: DenoiseStats | None = None,
    ) -> None:
        self.unet = unet
        self.text = text
        self.guidance = guidance
        self.alphas = alphas_cumprod
        self.dtype = dtype
        self.scale = guidance_scale
        self.cfg = 2 if guidance_scale > 1.0 else 1
        if self.cfg == 2 and text.uncond is None:
            raise ValueError("classifier-free guidance needs the unconditional embedding")
        self.bank = bank if bank is not None else ScratchBank()
        if guidance.keeps_bank and isinstance(self.bank, ScratchBank):
            raise ValueError("guidance that outlives a call needs a TileBank or CanvasBank")
        self.stats = stats if stats is not None else DenoiseStats()
        self._t_g = None
        if guidance.timestep is not None:
            # A fill on the device, not torch.tensor(..., device=cuda): no host→device copy, no synchronisation.
            self._t_g = torch.full((), guidance.timestep, device=alphas_cumprod.device, dtype=torch.long)
        # What does not change between calls is made once: the text rows per batch layout, the stacked
        # guidance latents and noise of each tile batch, the noise coefficients of the current step.
        self._text_rows: dict[tuple[int, bool], torch.Tensor] = {}
        self._guides: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        self._coefficients: tuple[torch.Tensor, torch.Tensor] | None = None
        self._samples: dict[int, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, batch: TileBatch, crops: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predictions ``[T, C, th, tw]`` (CFG combined; the compute dtype, float32 with CFG) for the tiles
        ``x`` ``[T, C, th, tw]``."""
        g = self.guidance
        n = x.shape[0]
        rows = [x] * self.cfg
        context = None
        joint = False
        if g.streams:
            view = self.bank.view(BankSlot(batch.index, batch.tiles, batch.shift), x.device)
            if g.timestep is not None:
                if batch.step == 0:
                    self._write(view, batch, crops, n)
                context = ReadPass(view, g.streams, n, g.log_weights, self.cfg)
            elif batch.step % g.refresh == 0:
                joint = True
                rows.append(self._noised_guides(batch, crops, t))
                context = JointPass(view, g.streams, n, g.log_weights, self.cfg)
            else:
                context = ReadPass(view, g.streams, n, g.log_weights, self.cfg)
        sample = self._sample_buffer(sum(r.shape[0] for r in rows), x)
        torch.cat(rows, 0, out=sample)  # cast to the compute dtype on the way
        emb = self._text_batch(n, joint)
        out = self.unet(sample, t, encoder_hidden_states=emb, cross_attention_kwargs={"guidance": context}).sample
        self.stats.unet_calls += 1
        self.stats.unet_rows += sample.shape[0]
        if self.cfg == 2:
            uncond, cond = out[:n].float(), out[n : 2 * n].float()
            return uncond + self.scale * (cond - uncond)
        return out[:n]  # the denoiser blends in float32 (its copy casts)

    def _sample_buffer(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The UNet input of ``rows`` rows in the compute dtype, reused from call to call (calls are ordered
        on the device, so a call's input is read before the next call writes it)."""
        buffer = self._samples.get(rows)
        if buffer is None or buffer.shape[1:] != like.shape[1:] or buffer.device != like.device:
            buffer = torch.empty((rows, *like.shape[1:]), dtype=self.dtype, device=like.device)
            self._samples[rows] = buffer
        return buffer

    def _text_batch(self, n: int, joint: bool) -> torch.Tensor:
        """Text embeddings of a call's rows: ``[uncond ×n]`` (CFG), ``cond ×n``, then ``guide`` per guidance row."""
        key = (n, joint)
        if key not in self._text_rows:
            emb = [self.text.cond.expand(n, -1, -1)]
            if self.cfg == 2:
                assert self.text.uncond is not None
                emb.insert(0, self.text.uncond.expand(n, -1, -1))  # row order (cfg, tile): uncond first
            if joint:
                emb.append(self.text.guide.expand(n * len(self.guidance.streams), -1, -1))
            self._text_rows[key] = torch.cat(emb, 0)
        return self._text_rows[key]

    def _noised_guides(self, batch: TileBatch, crops: Mapping[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """The batch's guidance rows (stream-major) noised to ``t``: ``sqrt(ᾱ)·g + sqrt(1 − ᾱ)·ε``."""
        key = (batch.index, batch.shift)
        pair = self._guides.get(key)
        if pair is None:  # [2, S·T, C, th, tw]: the latents and their noise, stream-major
            streams = self.guidance.streams
            pair = torch.stack([torch.cat([crops[s] for s in streams]), torch.cat([crops[noise_key(s)] for s in streams])])
            self._guides[key] = pair
        if self._coefficients is None or self._coefficients[0] is not t:
            self._coefficients = (t, torch.stack(noise_coefficients(t, self.alphas)))
        return torch.tensordot(self._coefficients[1], pair, dims=1)  # one kernel for every row

    def _write(self, view: object, batch: TileBatch, crops: Mapping[str, torch.Tensor], n: int) -> None:
        """The cached guidance pass of one tile batch: guidance rows at ``t_g``; their K/V go to ``view``."""
        start = time.perf_counter()
        g = self.guidance
        assert self._t_g is not None
        rows = self._noised_guides(batch, crops, self._t_g)
        emb = self.text.guide.expand(rows.shape[0], -1, -1)
        self.unet(rows.to(self.dtype), self._t_g, encoder_hidden_states=emb, cross_attention_kwargs={"guidance": WritePass(view, g.streams, n)})  # type: ignore[arg-type]
        self.stats.unet_calls += 1
        self.stats.unet_rows += rows.shape[0]
        self.stats.guidance_seconds += time.perf_counter() - start
