"""What a batch reports: an :class:`ImageResult` per input (one ``--json`` line), the :class:`BatchPlan`
decided before any image is read, the :class:`BatchSummary` of a run, and the :class:`BatchEvents` the
runner reports progress through (the CLI renders them; tests record them). Torch-free."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cassr_cli.config import UpscaleConfig
from cassr_cli.errors import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK
from cassr_cli.io.naming import PlannedOutput

if TYPE_CHECKING:
    from cassr_cli.engine.pipeline import CassrPipeline

Status = Literal["ok", "skipped", "failed"]

OUTPUT_EXISTS = "output exists"
"""Why an output is skipped when it is already there (without ``overwrite``): what makes batches resume."""


@dataclass
class ImageResult:
    """The outcome for one input (one ``--json`` line)."""

    input: str
    output: str | None
    status: Status
    seconds: float = 0.0
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object. A path that is not valid UTF-8 (Linux allows any bytes but ``/`` and
        NUL) is shown with U+FFFD in ``input``/``output``, and its exact bytes are added base64-encoded
        as ``input_bytes``/``output_bytes``."""
        fields: dict[str, Any] = {}
        for key, path in (("input", self.input), ("output", self.output)):
            fields[key] = path
            raw = os.fsencode(path) if path is not None else b""
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                fields[key] = raw.decode("utf-8", "replace")
                fields[f"{key}_bytes"] = base64.b64encode(raw).decode("ascii")
        error = self.error.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if self.error else None
        extra = {"status": self.status, "seconds": round(self.seconds, 4), "error": error, "stats": self.stats}
        return {**fields, **extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageResult:
        """The result of a ``--json`` record (another process's, e.g. a torchrun rank or a Ray worker);
        exact path bytes (``input_bytes``/``output_bytes``) win over the displayed text."""

        def path(key: str) -> str | None:
            if f"{key}_bytes" in data:
                return os.fsdecode(base64.b64decode(data[f"{key}_bytes"]))
            return None if data[key] is None else str(data[key])

        return cls(
            input=path("input") or "",
            output=path("output"),
            status=data["status"],
            seconds=float(data["seconds"]),
            error=data["error"],
            stats=dict(data["stats"]),
        )


@dataclass
class BatchPlan:
    """What a batch will do, decided before any image is read."""

    outputs: list[PlannedOutput]
    notes: list[str]
    dest: Path


@dataclass
class BatchSummary:
    """All results of a batch, in processing order."""

    results: list[ImageResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 all done (skips included), 1 some failed, 130 interrupted."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILURES if self.failures else EXIT_OK


class BatchEvents(Protocol):
    """How the runner reports progress (the CLI renders it; tests record it)."""

    def batch_started(self, total: int) -> None: ...

    def image_started(self, index: int, planned: PlannedOutput) -> None: ...

    def stage_progress(self, stage: str, done: int, total: int) -> None: ...

    def image_finished(self, result: ImageResult) -> None: ...


class NullEvents:
    """Events that go nowhere (the Python API's default)."""

    def batch_started(self, total: int) -> None:
        pass

    def image_started(self, index: int, planned: PlannedOutput) -> None:
        pass

    def stage_progress(self, stage: str, done: int, total: int) -> None:
        pass

    def image_finished(self, result: ImageResult) -> None:
        pass


PipelineFactory = Callable[[UpscaleConfig], "CassrPipeline"]


def begin_batch(plan: BatchPlan, config: UpscaleConfig, events: BatchEvents) -> tuple[BatchSummary, list[PlannedOutput]]:
    """Start running ``plan``: outputs that exist already are ``skipped`` (unless ``config.overwrite``),
    ``events`` hear ``batch_started`` and those records; returns the summary so far and the outputs left to
    do, in plan order. Every way of running a batch (one process, several devices, Ray) starts here."""
    summary = BatchSummary(notes=list(plan.notes))
    todo: list[PlannedOutput] = []
    for planned in plan.outputs:
        if planned.output.exists() and not config.overwrite:
            summary.results.append(ImageResult(str(planned.item.path), str(planned.output), "skipped", error=OUTPUT_EXISTS))
        else:
            todo.append(planned)
    events.batch_started(len(plan.outputs))
    for result in summary.results:
        events.image_finished(result)
    return summary, todo
