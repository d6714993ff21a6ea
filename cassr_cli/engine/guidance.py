"""The guidance state of multiple attention: a *bank* of guidance K/V that guidance passes write and main
passes read, and the *passes* that tell the attention processors what a UNet call's rows are.

A UNet call carries one pass object in ``cross_attention_kwargs={"guidance": pass}``; every ``attn1``
processor (:class:`~cassr_cli.engine.attention.MultiAttentionProcessor`) hands its projections to
``pass.attend(layer, q, k, v, hidden)``. Three passes, one per row layout:

* :class:`WritePass` — all rows are guidance rows (``streams × tiles``, stream-major). They run the plain
  frozen model; their K/V (plus the adapter's deltas) are written to a bank view.
* :class:`ReadPass` — all rows are main rows (``cfg × tiles``, uncond first). They attend to their own K/V
  plus their tile's guidance K/V, read from a bank view.
* :class:`JointPass` — ``[main rows ; guidance rows]`` in one call: the guidance rows write, then the main
  rows read, inside each layer (per-step guidance: guidance at the main rows' own noise level).

A *bank* stores what the writes leave for later reads:

* :class:`ScratchBank` keeps nothing beyond the call (per-step guidance: written and read in one call);
* :class:`TileBank` keeps K/V per tile batch (cached guidance, guidance refreshed every k steps, the
  training objective) — a read gets exactly the K/V its tile batch wrote; it can live in pinned host memory
  (``offload``) for large images;
* :class:`CanvasBank` keeps K/V on a per-layer canvas in latent coordinates, so tiles may move between the
  write and the read (a tile grid shifted every step): a read gathers the tokens under its tiles, whichever
  tile wrote them.

Banks hand out *views* (:meth:`GuidanceBank.view`) for one tile batch; a pass holds a view and only calls
``view.write(layer, k, v)`` / ``view.read(layer)`` with the layer's name. Everything that varies between
batches (the slot, tile positions, gather indices) is resolved when the view is made, outside the UNet, so
a compiled UNet sees the same graph for every batch and nothing in the guidance state breaks a graph.

Guidance K/V have the layout ``[streams, tiles, heads, tokens, head_dim]`` in the compute dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from cassr_cli.engine.attention import MultiAttentionProcessor
    from cassr_cli.tiling.plan import Tile

KV = tuple[torch.Tensor, torch.Tensor]


class BankView(Protocol):
    """The part of a bank one tile batch sees: per-layer guidance K/V ``[S, T, H, L, d]``."""

    def write(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> None: ...

    def read(self, layer: str) -> KV: ...


@dataclass(frozen=True)
class BankSlot:
    """Where a tile batch sits, for a bank: its index in the plan and, for :class:`CanvasBank`, its tiles
    (in the latent frame shifted by ``shift``, i.e. tile row ``y`` covers latent row ``(y + shift[0]) mod h``)."""

    index: int
    tiles: tuple[Tile, ...] = ()
    shift: tuple[int, int] = (0, 0)


class GuidanceBank(ABC):
    """Storage of guidance K/V between a write and later reads."""

    @abstractmethod
    def view(self, slot: BankSlot, device: torch.device) -> BankView:
        """The view of one tile batch; ``device`` is where reads are returned."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held now."""

    @abstractmethod
    def release(self) -> None:
        """Drop everything (after the last step)."""


class _DictView:
    def __init__(self, entries: dict[str, KV], device: torch.device, offload: bool) -> None:
        self._entries, self._device, self._offload = entries, device, offload

    def write(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> None:
        if self._offload and key.device.type != "cpu":
            key, value = _to_pinned_host(key), _to_pinned_host(value)
        self._entries[layer] = (key, value)

    def read(self, layer: str) -> KV:
        key, value = self._entries[layer]
        return key.to(self._device, non_blocking=True), value.to(self._device, non_blocking=True)


class ScratchBank(GuidanceBank):
    """Keeps nothing between calls: each view is a fresh dict, for passes that write and read in the same
    call (its K/V are the call's activations, so :meth:`nbytes` is 0)."""

    def view(self, slot: BankSlot, device: torch.device) -> BankView:
        return _DictView({}, device, offload=False)

    def nbytes(self) -> int:
        return 0

    def release(self) -> None:
        pass


class TileBank(GuidanceBank):
    """K/V per (tile batch, layer), exactly as the batch's write left them.

    Args:
        offload: keep entries in pinned host memory (copied back, asynchronously, when read) — large images,
            where the bank would not fit next to the model.
    """

    def __init__(self, *, offload: bool = False) -> None:
        self.offload = offload
        self._slots: dict[int, dict[str, KV]] = {}

    def view(self, slot: BankSlot, device: torch.device) -> BankView:
        return _DictView(self._slots.setdefault(slot.index, {}), device, self.offload)

    def nbytes(self) -> int:
        return sum(_nbytes(entries.values()) for entries in self._slots.values())

    def release(self) -> None:
        self._slots.clear()


class CanvasBank(GuidanceBank):
    """K/V per layer on a canvas covering the whole latent: ``[S, heads, h/f, w/f, d]`` for a layer whose
    tokens are ``f × f`` latent pixels.

    A write scatters each tile's tokens to the canvas; a read gathers the tokens under each tile. Tiles may
    wrap around the latent's edges (a shifted grid rolls the latent). Tile starts and shifts must be
    multiples of the coarsest token size ``multiple`` (the UNet's ``2 ** down-samplings``), so every
    attention level's token grid lines up with the canvas. Where written tiles overlap, the last write wins
    (any writer's tokens describe that place).

    Args:
        height, width: the latent size.
        multiple: the UNet's latent multiple (8 for SD 1.x/2.x).
        offload: keep the canvases in host memory and gather there (large images).
    """

    def __init__(self, height: int, width: int, *, multiple: int, offload: bool = False) -> None:
        if height % multiple or width % multiple:
            raise ValueError(f"latent {height}×{width} must be a multiple of {multiple}")
        self.height, self.width, self.multiple, self.offload = height, width, multiple, offload
        self._canvas: dict[str, KV] = {}
        self._gathers: dict[tuple[tuple[Tile, ...], tuple[int, int]], dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    def view(self, slot: BankSlot, device: torch.device) -> BankView:
        if not slot.tiles:
            raise ValueError("a CanvasBank view needs the batch's tiles")
        key = (slot.tiles, slot.shift)  # a batch's tiles at a shift: the same indices whenever they recur
        indices = self._gathers.get(key)
        if indices is None:
            store = torch.device("cpu") if self.offload else device
            indices = {}
            f = 1
            while f <= self.multiple:
                indices[f] = self._indices(slot, f, store)
                f *= 2
            self._gathers[key] = indices
        tile_area = slot.tiles[0].height * slot.tiles[0].width
        return _CanvasView(self, indices, tile_area, device)

    def _indices(self, slot: BankSlot, f: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Canvas rows ``[T, th/f, 1]`` and columns ``[T, 1, tw/f]`` of the batch's tiles at token size ``f``."""
        dy, dx = slot.shift
        for tile in slot.tiles:
            if (tile.y0 + dy) % self.multiple or (tile.x0 + dx) % self.multiple:
                raise ValueError(f"tile {tile} shifted by {slot.shift} is not aligned to {self.multiple}")
        h, w = self.height // f, self.width // f
        # Built on the host, copied once per batch layout (the bank caches them) without waiting: from pinned
        # memory, asynchronously.
        rows = torch.tensor([[(i + (t.y0 + dy) // f) % h for i in range(t.height // f)] for t in slot.tiles])
        cols = torch.tensor([[(i + (t.x0 + dx) // f) % w for i in range(t.width // f)] for t in slot.tiles])
        if device.type == "cuda":
            rows, cols = rows.pin_memory(), cols.pin_memory()
        return rows[:, :, None].to(device, non_blocking=True), cols[:, None, :].to(device, non_blocking=True)

    def nbytes(self) -> int:
        return _nbytes(self._canvas.values())

    def release(self) -> None:
        self._canvas.clear()
        self._gathers.clear()


class _CanvasView:
    def __init__(
        self, bank: CanvasBank, indices: Mapping[int, tuple[torch.Tensor, torch.Tensor]], tile_area: int, device: torch.device
    ) -> None:
        self._bank, self._indices, self._tile_area, self._device = bank, indices, tile_area, device

    def _level(self, tokens: int) -> int:
        return math.isqrt(self._tile_area // tokens)

    def write(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> None:
        s, t, heads, tokens, d = key.shape
        f = self._level(tokens)
        rows, cols = self._indices[f]
        th, tw = rows.shape[1], cols.shape[2]
        bank = self._bank
        if layer not in bank._canvas:
            store = rows.device
            shape = (s, heads, bank.height // f, bank.width // f, d)
            bank._canvas[layer] = (
                torch.zeros(shape, dtype=key.dtype, device=store),
                torch.zeros(shape, dtype=value.dtype, device=store),
            )
        canvas_k, canvas_v = bank._canvas[layer]
        for canvas, x in ((canvas_k, key), (canvas_v, value)):
            # [S, T, H, th·tw, d] → [S, H, T, th, tw, d], the layout of canvas[:, :, rows, cols]
            tiles = x.reshape(s, t, heads, th, tw, d).permute(0, 2, 1, 3, 4, 5).to(canvas.device)
            canvas[:, :, rows, cols] = tiles

    def read(self, layer: str) -> KV:
        canvas_k, canvas_v = self._bank._canvas[layer]
        s, heads, _, _, d = canvas_k.shape
        out = []
        for canvas in (canvas_k, canvas_v):
            f = self._bank.height // canvas.shape[2]
            rows, cols = self._indices[f]
            t, th, tw = rows.shape[0], rows.shape[1], cols.shape[2]
            tiles = canvas[:, :, rows, cols]  # [S, H, T, th, tw, d]
            tiles = tiles.permute(0, 2, 1, 3, 4, 5).reshape(s, t, heads, th * tw, d)
            out.append(tiles.to(self._device, non_blocking=True))
        return out[0], out[1]


def _to_pinned_host(x: torch.Tensor) -> torch.Tensor:
    host = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=torch.cuda.is_available())
    host.copy_(x, non_blocking=True)  # ordered on the stream; only ever read back by the same stream
    return host


def _nbytes(pairs: object) -> int:
    return sum(t.numel() * t.element_size() for pair in pairs for t in pair)  # type: ignore[attr-defined]


# --- passes -----------------------------------------------------------------------------------------------


class GuidancePass(ABC):
    """What one UNet call's rows are; the ``attn1`` processors delegate their attention to it.

    Attributes:
        streams: guidance streams, in row order.
        tiles: tiles (or training samples) ``T`` in the call.
    """

    streams: tuple[str, ...]
    tiles: int

    @abstractmethod
    def attend(
        self, layer: MultiAttentionProcessor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """Attention output ``[B, H, L, d]`` of every row of the call, given the layer's projections
        ``q, k, v`` ``[B, H, L, d]`` and its input ``hidden`` ``[B, L, C]``."""


@dataclass
class WritePass(GuidancePass):
    """Guidance rows only (``streams × tiles``, stream-major): the plain model; K/V go to ``view``."""

    view: BankView
    streams: tuple[str, ...]
    tiles: int

    def attend(self, layer, q, k, v, hidden):  # noqa: ANN001, ANN201 - see GuidancePass.attend
        out = layer.attend(q, k, v)
        key, value = layer.guidance_kv(hidden, k, v, self.streams, self.tiles)
        self.view.write(layer.name, key, value)
        return out


@dataclass
class ReadPass(GuidancePass):
    """Main rows only (``cfg × tiles``, uncond first): each attends to its own K/V and its tile's guidance
    K/V from ``view``, with the per-stream logit biases ``log_weights``."""

    view: BankView
    streams: tuple[str, ...]
    tiles: int
    log_weights: tuple[float, ...]
    cfg: int = 1

    def attend(self, layer, q, k, v, hidden):  # noqa: ANN001, ANN201 - see GuidancePass.attend
        key, value = self.view.read(layer.name)
        return layer.attend_main(q, k, v, key, value, self.streams, self.log_weights, self.cfg)


@dataclass
class JointPass(GuidancePass):
    """``[main rows ; guidance rows]`` in one call: the guidance rows write to ``view`` and run the plain
    model, then the main rows read it back — guidance at the main rows' own timestep, one UNet call."""

    view: BankView
    streams: tuple[str, ...]
    tiles: int
    log_weights: tuple[float, ...]
    cfg: int = 1

    def attend(self, layer, q, k, v, hidden):  # noqa: ANN001, ANN201 - see GuidancePass.attend
        m = self.cfg * self.tiles
        key, value = layer.guidance_kv(hidden[m:], k[m:], v[m:], self.streams, self.tiles)
        self.view.write(layer.name, key, value)
        guide_out = layer.attend(q[m:], k[m:], v[m:])
        key, value = self.view.read(layer.name)
        main_out = layer.attend_main(q[:m], k[:m], v[:m], key, value, self.streams, self.log_weights, self.cfg)
        return torch.cat([main_out, guide_out], 0)


def stream_log_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """User stream weights (> 0) → additive logit biases ``log(w)``."""
    return tuple(math.log(w) for w in weights)
