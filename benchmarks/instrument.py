"""Instruments for one benchmark run: every model call timed, counted and FLOP-counted; stages segmented;
host and device memory peaks.

:class:`ModelMeter` wraps methods of model objects (``unet.forward``, ``vae.encode``, ``vae.decode`` …) on
the instance, so nothing in the engine changes. Per call it records

* the time inside the call (``time.perf_counter`` on the CPU; CUDA events on a GPU, so nothing is
  synchronised per call and the engine's asynchrony is kept);
* the rows (batch size of the first tensor argument);
* the FLOPs, counted with :func:`benchmarks.flops.flop_counter` once per distinct call signature (shapes,
  dtypes, the guidance layout) and multiplied by the number of calls with that signature;
* the device memory peak (``torch.cuda.max_memory_allocated``/``reserved`` read after every call: host-side
  counters, no synchronisation). The engine resets these counters at each of its stages; reading them
  after every call keeps the true maximum anyway.

Calls are attributed to a *stage* (``activation``, ``encode``, ``guidance``, ``denoise``, ``decode``,
``text``): a new stage starts at the first call of a model of that stage. At each stage change the device
is synchronised once and the host peak (``VmHWM``) is read and reset (Linux ``/proc/self/clear_refs``), so
host peaks are per stage. Time after the last model call (colour fix, crop) is reported as ``tail``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.flops import flop_counter

StageOf = str | Callable[[tuple[Any, ...], dict[str, Any]], str]


# --- host memory ------------------------------------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def host_rss_bytes() -> int:
    """Resident set size of this process now (0 where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


def host_peak_bytes() -> int:
    """Peak resident set size since the last :func:`reset_host_peak` (or process start)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_host_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux ≥ 4.0). Returns False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_host_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so RSS deltas measured from here
    are not hidden by memory an earlier run freed but the allocator kept. No-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_average() -> tuple[float, float, float] | None:
    """The 1/5/15-minute load averages (other processes competing for the CPU make CPU timings noisy)."""
    try:
        return os.getloadavg()
    except OSError:
        return None


# --- call signatures --------------------------------------------------------------------------------


def signature(value: Any) -> Any:
    """A hashable description of a call argument that decides its FLOPs: tensor shapes and dtypes,
    structure, the guidance layout; not the values of scalars (a timestep must not make a new key)."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), str(value.dtype))
    if isinstance(value, (list, tuple)):
        return tuple(signature(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), signature(v)) for k, v in value.items()))
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return type(value).__name__
    if type(value).__name__ in ("WritePass", "ReadPass", "JointPass"):  # the guidance layout changes attention FLOPs
        return (
            "guidance",
            type(value).__name__,
            value.tiles,
            getattr(value, "cfg", 0),
            tuple(value.streams),
            any(w != 0.0 for w in getattr(value, "log_weights", ())),
        )
    return type(value).__name__


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


# --- records ----------------------------------------------------------------------------------------


@dataclass
class CallTotals:
    """Totals of the model calls of one label or one stage."""

    calls: int = 0
    rows: int = 0
    seconds: float = 0.0
    flops: int = 0
    uncounted_calls: int = 0
    """Calls whose signature was never FLOP-counted (their FLOPs are missing from ``flops``)."""

    def add(self, rows: int, seconds: float, flops: int | None) -> None:
        self.calls += 1
        self.rows += rows
        self.seconds += seconds
        if flops is None:
            self.uncounted_calls += 1
        else:
            self.flops += flops


@dataclass
class Segment:
    """One contiguous stretch of a run attributed to a stage."""

    stage: str
    start: float
    end: float = 0.0
    host_peak_bytes: int = 0
    device_peak_allocated: int = 0
    device_peak_reserved: int = 0


@dataclass
class RunRecord:
    """Everything measured in one run (see :meth:`ModelMeter.run`)."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    model_cpu_seconds: float = 0.0
    """CPU time of this process inside model calls (CPU time is not inflated by other processes)."""
    host_baseline_bytes: int = 0
    host_peak_bytes: int = 0
    host_peak_exact: bool = True
    device_baseline_allocated: int = 0
    device_peak_allocated: int = 0
    device_peak_reserved: int = 0
    flop_counted_calls: int = 0
    """Calls FLOP-counted during this run (their time includes the counter's overhead)."""
    tail_seconds: float = 0.0
    head_seconds: float = 0.0
    by_label: dict[str, CallTotals] = field(default_factory=lambda: defaultdict(CallTotals))
    by_stage: dict[str, CallTotals] = field(default_factory=lambda: defaultdict(CallTotals))
    segments: list[Segment] = field(default_factory=list)
    load_average: tuple[float, float, float] | None = None

    @property
    def model_seconds(self) -> float:
        return sum(t.seconds for t in self.by_label.values())

    @property
    def flops(self) -> int:
        return sum(t.flops for t in self.by_label.values())

    def stage_walls(self) -> dict[str, float]:
        """Wall seconds per stage from the segments (first call of the stage to first call of the next)."""
        out: dict[str, float] = defaultdict(float)
        for seg in self.segments:
            out[seg.stage] += seg.end - seg.start
        return dict(out)

    def stage_peaks(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for seg in self.segments:
            cur = out.setdefault(seg.stage, {"host": 0, "device_allocated": 0, "device_reserved": 0})
            cur["host"] = max(cur["host"], seg.host_peak_bytes)
            cur["device_allocated"] = max(cur["device_allocated"], seg.device_peak_allocated)
            cur["device_reserved"] = max(cur["device_reserved"], seg.device_peak_reserved)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "model_seconds": self.model_seconds,
            "outside_model_seconds": self.wall_seconds - self.model_seconds,
            "outside_model_share": (self.wall_seconds - self.model_seconds) / self.wall_seconds if self.wall_seconds else 0.0,
            "model_cpu_seconds": self.model_cpu_seconds,
            "outside_model_cpu_seconds": self.cpu_seconds - self.model_cpu_seconds,
            "head_seconds": self.head_seconds,
            "tail_seconds": self.tail_seconds,
            "flops": self.flops,
            "flop_counted_calls_in_run": self.flop_counted_calls,
            "host_baseline_bytes": self.host_baseline_bytes,
            "host_peak_bytes": self.host_peak_bytes,
            "host_peak_delta_bytes": self.host_peak_bytes - self.host_baseline_bytes,
            "host_peak_exact": self.host_peak_exact,
            "device_baseline_allocated_bytes": self.device_baseline_allocated,
            "device_peak_allocated_bytes": self.device_peak_allocated,
            "device_peak_reserved_bytes": self.device_peak_reserved,
            "load_average": self.load_average,
            "models": {k: dataclasses.asdict(v) for k, v in self.by_label.items()},
            "stages": {k: dataclasses.asdict(v) for k, v in self.by_stage.items()},
            "segment_walls": self.stage_walls(),
            "segment_peaks": self.stage_peaks(),
        }


# --- the meter --------------------------------------------------------------------------------------


class ModelMeter:
    """Wraps model methods and measures the runs made inside :meth:`run`.

    Args:
        device: the compute device (CUDA: events and memory counters; else wall clocks).
        count_flops: FLOP-count each new call signature (kept across runs in :attr:`flop_table`).
    """

    def __init__(self, device: torch.device, *, count_flops: bool = True) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.count_flops = count_flops
        self.flop_table: dict[tuple[str, Any], int] = {}
        self._wrapped: list[tuple[Any, str, Any, bool]] = []
        self._record: RunRecord | None = None
        self._depth = 0
        self._stage: str | None = None
        self._pending: list[tuple[str, str, int, Any, Any, int | None]] = []
        self._last_post = 0.0

    # -- wrapping --------------------------------------------------------------------------------------

    def watch(self, owner: Any, method: str, label: str, stage: StageOf) -> None:
        """Measure every call of ``owner.<method>`` as model ``label`` in ``stage`` (a name, or a function of
        the call's ``(args, kwargs)``). Undo with :meth:`unwatch_all`."""
        had_own = method in vars(owner)
        original = getattr(owner, method)
        meter = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return meter._call(original, label, stage, args, kwargs)

        setattr(owner, method, wrapper)
        self._wrapped.append((owner, method, original, had_own))

    @contextlib.contextmanager
    def watching(self) -> Iterator[ModelMeter]:
        """A block whose :meth:`watch` calls are undone when it exits (before any outer wrapper is)."""
        try:
            yield self
        finally:
            self.unwatch_all()

    def unwatch_all(self) -> None:
        """Restore every wrapped method."""
        while self._wrapped:
            owner, method, original, had_own = self._wrapped.pop()
            if had_own:
                setattr(owner, method, original)
            else:
                delattr(owner, method)

    # -- runs ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(self) -> Iterator[RunRecord]:
        """Measure the calls made inside the block; the record is complete when the block exits."""
        import gc

        gc.collect()
        release_free_host_memory()
        self._sync()
        record = RunRecord(load_average=load_average())
        record.host_peak_exact = reset_host_peak()
        record.host_baseline_bytes = host_rss_bytes()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            record.device_baseline_allocated = int(torch.cuda.memory_allocated(self.device))
        self._record, self._stage, self._pending = record, None, []
        cpu0 = time.process_time()
        start = time.perf_counter()
        self._last_post = start
        try:
            yield record
        finally:
            self._sync()
            end = time.perf_counter()
            record.wall_seconds = end - start
            record.cpu_seconds = time.process_time() - cpu0
            record.tail_seconds = end - self._last_post
            if record.segments:
                record.head_seconds = record.segments[0].start - start
                self._close_segment(end)
            self._resolve_pending()
            record.host_peak_bytes = max([host_peak_bytes(), *(s.host_peak_bytes for s in record.segments)])
            self._read_device_peak()
            self._record, self._stage = None, None

    # -- internals -------------------------------------------------------------------------------------

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _call(self, original: Callable[..., Any], label: str, stage: StageOf, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._depth > 0:  # a watched call inside a watched call: count the outer one only
            return original(*args, **kwargs)
        record = self._record
        stage_name = stage if isinstance(stage, str) else stage(args, kwargs)
        key = (label, signature((args, kwargs)))
        flops = self.flop_table.get(key)
        counting = self.count_flops and flops is None
        if record is not None and stage_name != self._stage:
            self._switch(stage_name)
        first = _first_tensor(args, kwargs)
        rows = int(first.shape[0]) if first is not None and first.dim() > 0 else 1
        self._depth += 1
        try:
            if self.cuda and record is not None:
                begin_evt = torch.cuda.Event(enable_timing=True)
                begin_evt.record()
            t0 = time.perf_counter()
            c0 = time.process_time()
            if counting:
                with flop_counter() as counter:
                    out = original(*args, **kwargs)
                flops = int(counter.get_total_flops())
                self.flop_table[key] = flops
            else:
                out = original(*args, **kwargs)
            t1 = time.perf_counter()
            c1 = time.process_time()
        finally:
            self._depth -= 1
        if record is not None:
            record.model_cpu_seconds += c1 - c0
            if counting:
                record.flop_counted_calls += 1
            if self.cuda:
                end_evt = torch.cuda.Event(enable_timing=True)
                end_evt.record()
                self._pending.append((label, stage_name, rows, begin_evt, end_evt, flops))
                self._read_device_peak()
            else:
                record.by_label[label].add(rows, t1 - t0, flops)
                record.by_stage[stage_name].add(rows, t1 - t0, flops)
            self._last_post = time.perf_counter()
        return out

    def _switch(self, stage: str) -> None:
        record = self._record
        assert record is not None
        self._sync()
        now = time.perf_counter()
        if record.segments:
            self._close_segment(now)
        reset_host_peak()
        if self.cuda:
            self._read_device_peak()
        record.segments.append(Segment(stage, now))
        self._stage = stage

    def _close_segment(self, now: float) -> None:
        record = self._record
        assert record is not None
        seg = record.segments[-1]
        seg.end = now
        seg.host_peak_bytes = host_peak_bytes()
        if self.cuda:
            self._read_device_peak()

    def _read_device_peak(self) -> None:
        record = self._record
        if record is None or not self.cuda:
            return
        allocated = int(torch.cuda.max_memory_allocated(self.device))
        reserved = int(torch.cuda.max_memory_reserved(self.device))
        record.device_peak_allocated = max(record.device_peak_allocated, allocated)
        record.device_peak_reserved = max(record.device_peak_reserved, reserved)
        if record.segments:
            seg = record.segments[-1]
            seg.device_peak_allocated = max(seg.device_peak_allocated, allocated)
            seg.device_peak_reserved = max(seg.device_peak_reserved, reserved)

    def _resolve_pending(self) -> None:
        """CUDA: turn the recorded event pairs into seconds (the device was synchronised already)."""
        record = self._record
        assert record is not None
        for label, stage, rows, begin_evt, end_evt, flops in self._pending:
            seconds = begin_evt.elapsed_time(end_evt) / 1000.0
            record.by_label[label].add(rows, seconds, flops)
            record.by_stage[stage].add(rows, seconds, flops)
        self._pending = []
