"""The tiled denoiser: ``denoiser(x_full, t) → prediction_full``, in the style of k-diffusion's denoiser
wrappers, so the sampling loop is the stock one (``engine/sampling.py``) and knows nothing of tiles.

Per call (one per sampling step) the denoiser

1. optionally rolls the latent (and every condition) by this step's grid shift (``shifts``: tiles without
   overlap on a grid that moves every step, as SpotDiffusion / Tiled Diffusion's random shift);
2. cuts the latent into the tiles of its one :class:`~cassr_cli.tiling.plan.TilePlan`, ``tile_batch`` at a
   time, and crops every *condition* the same way;
3. calls the per-tile model on each batch and blends the predictions into one full-size prediction with
   the plan's one window (:class:`~cassr_cli.tiling.blend.TileBlender`), then rolls it back.

Extension point — the per-tile model. Anything with the :class:`TileModel` call signature works::

    model(x: [T, C, th, tw], t: 0-d tensor, batch: TileBatch, crops: {name: [T, C', th·f, tw·f]}) → [T, C, th, tw]

``x`` is the batch's tiles of the denoiser's input, ``crops`` the same tiles cut from each condition given
to the denoiser (``conditions={name: [1, C', h·f, w·f]}``); a condition may be ``f`` times larger than the
latent on both axes (an image-space condition such as an up-sampled LR image at ``f = 8``), and its crop is
the tile scaled by ``f``. ``batch`` says which step, which batch of the plan and which tiles these are.
Stage 2's multi-attention guidance is one such model (:class:`~cassr_cli.engine.guided_unet.MultiAttentionModel`:
guidance rows, CFG rows, the guidance bank); a UNet with skip-connection tuners conditioned on an
up-sampled image is another — it only needs the crops. Predictions may come in any float dtype; they are
blended in float32.

Latents are ``[1, C, h, w]`` on the compute device; noise is never drawn here (the sampler's generator
owns all randomness), so results do not depend on the tile batch or the batch order.

Several devices. Given ``replicas`` (copies of the tile model on other devices, :class:`TileReplica`),
each step's tile batches are dealt round-robin — batch ``i`` to worker ``i mod n``, worker 0 being
``model`` on ``device`` — and the workers run at once, one thread each, so the devices overlap. A worker
moves its batch's input tiles, crops and timestep to its device, and its predictions back to ``device``,
where the main thread puts them on the one canvas (the tile stack) and reports progress. The dealing is
the same at every step, so a model that keeps per-batch state (a guidance bank) sees each of its batches
every step. A failure in any worker (out of memory included) stops the others after their current batch
and is raised by the call.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from cassr_cli.tiling.blend import TileBlender, TileStack
from cassr_cli.tiling.plan import Tile, TilePlan
from cassr_cli.tiling.shift import GridShifts

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class TileBatch:
    """Which tiles a model call gets.

    Attributes:
        step: the denoiser call this batch belongs to (0 for the first sampling step).
        index: the batch's index in the plan (the same tiles at every step of an unshifted plan).
        tiles: the tiles, in the frame of the rolled latent.
        shift: the step's grid shift ``(dy, dx)`` in latent pixels: tile row ``y`` is latent row
            ``(y + dy) mod h`` (``(0, 0)`` without shifting).
    """

    step: int
    index: int
    tiles: tuple[Tile, ...]
    shift: tuple[int, int] = (0, 0)


class TileModel(Protocol):
    """The per-tile model a :class:`TiledDenoiser` calls (see the module docstring)."""

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, batch: TileBatch, crops: Mapping[str, torch.Tensor]
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class TileReplica:
    """A copy of the per-tile model whose weights live on ``device`` (inputs arrive there, and its
    predictions may be on ``device`` too)."""

    model: TileModel
    device: torch.device


@dataclass
class DenoiseStats:
    """Counters and timings of one image's denoising (``--json`` stats); the denoiser counts tiles and
    steps, the tile model its UNet calls and rows."""

    seconds: float = 0.0
    guidance_seconds: float = 0.0
    steps: int = 0
    tiles: int = 0
    unet_calls: int = 0
    unet_rows: int = 0
    guidance_cache_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class TiledDenoiser:
    """``denoiser(x, t)``: the blended prediction of ``model`` over ``plan``'s tiles.

    Args:
        model: the per-tile model.
        plan: tiles over the latent (the latent's ``h × w`` is the plan's area).
        tile_batch: tiles per model call.
        conditions: ``{name: [1, C', h·f, w·f]}`` cropped per tile for the model (integer ``f ≥ 1``).
        shifts: per-step grid shifts (tiles then move every step; the plan should not overlap), or None.
        steps: how many calls to expect (for progress).
        progress: ``progress(done, total)`` after each tile batch.
        stats: counters to fill (shared with the model).
        device: where the latent, the conditions and the blended prediction live (the canvas device), and
            where ``model`` runs.
        replicas: copies of the model on other devices; tile batches are then spread over ``model`` and
            the replicas (module docstring). Call :meth:`close` when done with the denoiser.
    """

    def __init__(
        self,
        model: TileModel,
        plan: TilePlan,
        *,
        tile_batch: int,
        conditions: Mapping[str, torch.Tensor] | None = None,
        shifts: GridShifts | None = None,
        steps: int = 1,
        progress: ProgressFn | None = None,
        stats: DenoiseStats | None = None,
        device: torch.device | None = None,
        replicas: Sequence[TileReplica] = (),
    ) -> None:
        self.model = model
        self.device = device or torch.device("cpu")
        self.workers = [TileReplica(model, self.device), *replicas]
        self.worker_batches = [0] * len(self.workers)
        """Tile batches each worker (``model``, then each replica) has run so far."""
        self._pool: ThreadPoolExecutor | None = None
        self.plan = plan
        self.batches = list(plan.batches(tile_batch))
        self.conditions = dict(conditions or {})
        self.factors = {name: _factor(c, plan) for name, c in self.conditions.items()}
        self.shifts = shifts
        self.steps = steps
        self.progress = progress
        self.stats = stats if stats is not None else DenoiseStats()
        self.stats.tiles = len(plan)
        self.blender = TileBlender(plan, device=self.device, dtype=torch.float32)
        self.calls = 0
        # Buffers reused every step: the input with its tile views made once (cutting a batch is one
        # concatenation) and the stack of all tiles' predictions (writing a batch is one copy, blending a
        # step one fold), so the host launches few operations per step.
        self._input: torch.Tensor | None = None
        self._input_views: dict[Tile, torch.Tensor] = {}
        self._stack: TileStack | None = None
        self._crops: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The prediction ``[1, C, h, w]`` (float32) for the latent ``x`` ``[1, C, h, w]`` at timestep ``t``."""
        if x.shape[0] != 1 or tuple(x.shape[-2:]) != (self.plan.height, self.plan.width):
            raise ValueError(f"latent {tuple(x.shape)} does not match the plan [1, C, {self.plan.height}, {self.plan.width}]")
        start = time.perf_counter()
        step = self.calls
        self.calls += 1
        shift = self.shifts(step) if self.shifts is not None else (0, 0)
        if self._input is None or self._input.shape != x.shape or self._input.dtype != x.dtype:
            self._input = torch.empty_like(x)
            self._input_views = self.blender.views(self._input)
            self._stack = TileStack(self.blender, x.shape[1])
        assert self._stack is not None
        self._input.copy_(_roll(x, shift, 1))
        if len(self.workers) > 1:
            self._spread(step, shift, t)
        else:
            self._run_here(step, shift, t)
        self.stats.steps = self.calls
        self.stats.seconds += time.perf_counter() - start
        return _roll(self._stack.blend(), (-shift[0], -shift[1]), 1)

    def close(self) -> None:
        """Stop the worker threads (several devices only; the denoiser is not used afterwards)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _run_here(self, step: int, shift: tuple[int, int], t: torch.Tensor) -> None:
        """One step's batches on ``model``, one after the other, on this thread."""
        assert self._stack is not None
        conditions = None
        for index, tiles in enumerate(self.batches):
            crops = self._crops.get(index)
            if crops is None:
                if conditions is None:
                    conditions = {name: _roll(c, shift, self.factors[name]) for name, c in self.conditions.items()}
                crops = {name: crop(c, tiles, self.factors[name]) for name, c in conditions.items()}
                if self.shifts is None:  # the conditions never change, nor do their crops
                    self._crops[index] = crops
            x_tiles = torch.cat([self._input_views[tile] for tile in tiles])
            self._stack.put(tiles, self.model(x_tiles, t, TileBatch(step, index, tiles, shift), crops))
            self.worker_batches[0] += 1
            if self.progress is not None:
                self.progress(step * len(self.batches) + index + 1, self.steps * len(self.batches))

    def _spread(self, step: int, shift: tuple[int, int], t: torch.Tensor) -> None:
        """One step's batches dealt over the workers, which run at once; predictions are put on the stack
        here, in the order they arrive (each batch has its own rows, so the order does not matter)."""
        assert self._stack is not None
        n = len(self.workers)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cassr-tiles")
        conditions: dict[str, torch.Tensor] | None = None
        if self.shifts is not None or len(self._crops) < len(self.batches):
            conditions = {name: _roll(c, shift, self.factors[name]) for name, c in self.conditions.items()}
        arrived: queue.SimpleQueue[tuple[int, torch.Tensor] | BaseException] = queue.SimpleQueue()
        stop = threading.Event()
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        futures: list[Future[None]] = [
            self._pool.submit(self._work, w, step, shift, t, conditions, arrived, stop, modes) for w in range(n)
        ]
        try:
            for done in range(1, len(self.batches) + 1):
                item = arrived.get()
                if isinstance(item, BaseException):
                    raise item
                index, prediction = item
                self._stack.put(self.batches[index], prediction)
                if self.progress is not None:
                    self.progress(step * len(self.batches) + done, self.steps * len(self.batches))
        finally:
            stop.set()  # after a failure (or Ctrl-C) the other workers stop after their current batch
            wait_all(futures)

    def _work(
        self,
        w: int,
        step: int,
        shift: tuple[int, int],
        t: torch.Tensor,
        conditions: Mapping[str, torch.Tensor] | None,
        arrived: queue.SimpleQueue[Any],
        stop: threading.Event,
        modes: tuple[bool, bool],
    ) -> None:
        """Worker ``w``'s batches of one step (every ``n``-th, from ``w``), on the worker's device, in the
        caller's autograd mode; each prediction goes to ``arrived`` on the denoiser's device."""
        worker = self.workers[w]
        dev = worker.device
        try:
            with torch.set_grad_enabled(modes[0]), torch.inference_mode(modes[1]), _on_device(dev):
                t_here = t.to(dev)
                assert self._input is not None
                for index in range(w, len(self.batches), len(self.workers)):
                    if stop.is_set():
                        return
                    tiles = self.batches[index]
                    crops = self._crops.get(index)
                    if crops is None:
                        assert conditions is not None
                        crops = {name: crop(c, tiles, self.factors[name]).to(dev) for name, c in conditions.items()}
                        if self.shifts is None:  # each index is only ever dealt to this worker
                            self._crops[index] = crops
                    x_tiles = torch.cat([self._input_views[tile] for tile in tiles]).to(dev)
                    prediction = worker.model(x_tiles, t_here, TileBatch(step, index, tiles, shift), crops)
                    arrived.put((index, prediction.to(self.device)))
                    self.worker_batches[w] += 1
        except BaseException as err:  # handed to the caller's thread, which raises it
            arrived.put(err)


@contextlib.contextmanager
def _on_device(device: torch.device) -> Iterator[None]:
    """Make ``device`` the thread's current CUDA device (a no-op elsewhere)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


def crop(x: torch.Tensor, tiles: tuple[Tile, ...], factor: int = 1) -> torch.Tensor:
    """``[len(tiles)·B, C, th·f, tw·f]``: the tiles (scaled by ``factor``) cut from ``x`` ``[B, C, H, W]``,
    tile-major."""
    parts = []
    for tile in tiles:
        rows, cols = (tile.scaled(factor) if factor != 1 else tile).slices()
        parts.append(x[..., rows, cols])
    return torch.cat(parts, 0)


def _roll(x: torch.Tensor, shift: tuple[int, int], factor: int) -> torch.Tensor:
    """``x`` rolled so that row ``y`` of the result is row ``y + dy·f`` of ``x`` (and likewise columns)."""
    dy, dx = shift
    if dy == 0 and dx == 0:
        return x
    return torch.roll(x, shifts=(-dy * factor, -dx * factor), dims=(-2, -1))


def _factor(condition: torch.Tensor, plan: TilePlan) -> int:
    """The integer scale of a condition relative to the plan's area."""
    h, w = condition.shape[-2:]
    f = h // plan.height
    if f < 1 or h != f * plan.height or w != f * plan.width:
        raise ValueError(f"condition {h}×{w} is not an integer multiple of the latent {plan.height}×{plan.width}")
    return f
