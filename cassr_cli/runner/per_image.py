"""One image of a local batch, in the steps both dispatchers (one pipeline, ``runner/batch.py``; one per
device, ``runner/devices.py``) share: take the next image and claim it (:class:`Work`), read it
(:func:`read_input`), run the pipeline on it (:func:`compute`, :func:`upscale_decoded`), hand it to the
writers (:func:`deliver`), write it atomically and record the result (:func:`finish_write`).

The per-image error policy lives here: a bad image becomes a ``failed`` result and the batch goes on
(unless ``fail_fast``); problems with the environment (weights, device) propagate and stop the batch.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cassr_cli.config import UpscaleConfig
from cassr_cli.errors import DeviceUnavailableError, EnvironmentNotReadyError, ImageError
from cassr_cli.io.claims import IN_PROGRESS_ELSEWHERE, Claim, Claims
from cassr_cli.io.naming import PlannedOutput
from cassr_cli.io.writer_pool import WriterPool
from cassr_cli.runner.records import OUTPUT_EXISTS, BatchEvents, BatchSummary, ImageResult

if TYPE_CHECKING:
    import numpy as np

    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.io.image import DecodedImage

logger = logging.getLogger(__name__)


class Work:
    """The images still to do, in plan order, each claimed just before it is computed (so fast processes
    take more); images that are done or claimed elsewhere are reported as skipped on the way."""

    def __init__(
        self,
        todo: Sequence[PlannedOutput],
        config: UpscaleConfig,
        claims: Claims,
        started_at: float,
        events: BatchEvents,
        summary: BatchSummary,
    ) -> None:
        self.todo = todo
        self.config = config
        self.claims = claims
        self.started_at = started_at
        self.events = events
        self.summary = summary
        self.position = 0

    def take(self) -> tuple[PlannedOutput, Claim] | None:
        """The next image to compute, claimed; None when nothing is left for this process."""
        while self.position < len(self.todo):
            planned = self.todo[self.position]
            self.position += 1
            reason = self._done(planned)
            try:
                claim = None if reason else self.claims.acquire(planned.output)
            except OSError as err:  # DEST not writable or full: this image fails, the batch goes on
                self.fail(planned, f"cannot claim {planned.output}: {err.strerror or err} "
                          "(check that the output folder is writable and has free space)")  # fmt: skip
                continue
            if claim is not None:
                reason = self._done(planned)  # finished by another process just before the claim
                if reason is None:
                    return planned, claim
                self.claims.release(claim)
            self.skip(planned, reason or IN_PROGRESS_ELSEWHERE)
        return None

    def peek(self) -> PlannedOutput | None:
        """The image :meth:`take` will most likely return next (to read it ahead), claiming nothing."""
        for planned in self.todo[self.position :]:
            if self._done(planned) is None and self.claims.is_free(planned.output):
                return planned
        return None

    def _done(self, planned: PlannedOutput) -> str | None:
        """Why ``planned`` needs no work any more, or None."""
        try:
            modified = planned.output.stat().st_mtime
        except OSError:
            return None
        if not self.config.overwrite:
            return OUTPUT_EXISTS
        if modified >= self.started_at:
            return "written by another process of this run"
        return None

    def skip(self, planned: PlannedOutput, reason: str) -> None:
        result = ImageResult(str(planned.item.path), str(planned.output), "skipped", error=reason)
        self.summary.results.append(result)
        self.events.image_finished(result)

    def fail(self, planned: PlannedOutput, error: str) -> None:
        result = ImageResult(str(planned.item.path), None, "failed", error=error)
        self.summary.results.append(result)
        self.events.image_finished(result)


def read_input(planned: PlannedOutput, config: UpscaleConfig) -> tuple[DecodedImage, float]:
    from cassr_cli.io.image import read_image

    start = time.perf_counter()
    image = read_image(planned.item.path, max_pixels=config.max_pixels)
    return image, time.perf_counter() - start


Encoded = tuple["np.ndarray", "np.ndarray | None", "DecodedImage", UpscaleConfig]


def compute(
    planned: PlannedOutput,
    read: Future[tuple[DecodedImage, float]],
    config: UpscaleConfig,
    pipeline: CassrPipeline,
    events: BatchEvents,
) -> tuple[ImageResult, Encoded | None]:
    """Run the pipeline on one image. Per-image problems become a failed result; environment problems
    propagate and stop the batch."""
    start = time.perf_counter()
    result = ImageResult(str(planned.item.path), str(planned.output), "ok")
    try:
        decoded, read_seconds = read.result()
        key = str(planned.item.relative)
        rgb, alpha, stats = upscale_decoded(decoded, key, config, pipeline, progress=events.stage_progress)
        stats["read"] = {"seconds": read_seconds}
        result.stats = stats
        result.seconds = time.perf_counter() - start
        return result, (rgb, alpha, decoded, config)
    except (EnvironmentNotReadyError, KeyboardInterrupt):
        raise
    except Exception as err:  # per-image policy: record, log, go on — unless the GPU itself broke
        stop_on_device_failure(err)
        result.status = "failed"
        result.output = None
        result.error = describe_failure(err, planned.item.path)
        result.seconds = time.perf_counter() - start
        logger.debug("failure on %s", planned.item.path, exc_info=True)
        return result, None


def deliver(
    planned: PlannedOutput,
    claim: Claim,
    result: ImageResult,
    encoded: Encoded | None,
    work: Work,
    writers: WriterPool[tuple[ImageResult, Claim]],
    config: UpscaleConfig,
    summary: BatchSummary,
) -> bool:
    """Hand a computed image to the writers (or record its failure); False when the batch must stop
    (``fail_fast`` after a failure). Records come out in the order images are delivered."""

    def finish(due: Iterable[tuple[tuple[ImageResult, Claim], Future[float]]]) -> None:
        for (done, held), future in due:  # oldest first: results are recorded in processing order
            finish_write(done, held, future, work.claims, work.events, summary)

    if encoded is not None:  # earlier writes overlapped this image's compute; at most `writers` stay open
        if config.fail_fast:  # one write at a time, so a failed one stops the batch before the next
            finish(writers.drain())
            if summary.failures:  # that write failed: write nothing more
                work.claims.release(claim)
                return False
        write = functools.partial(encode_and_write, planned, *encoded, claim=claim, claims=work.claims)
        finish(writers.submit((result, claim), write))
    else:
        finish(writers.drain())
        work.claims.release(claim)
        summary.results.append(result)
        work.events.image_finished(result)
    return not (config.fail_fast and summary.failures)


def upscale_decoded(
    decoded: DecodedImage,
    key: str,
    config: UpscaleConfig,
    pipeline: CassrPipeline,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One image through the pipeline, as every ``cassr upscale`` image goes (the Python API too).

    Args:
        decoded: the input (:func:`cassr_cli.io.image.read_image` or ``decode_pil``).
        key: the relative output path the per-image seed derives from (the file name for a single file).
        progress: told ``(stage, done, total)`` as tiles finish.

    Returns:
        ``rgb`` float32 ``[H', W', 3]`` in ``[0, 1]``, ``alpha`` float32 ``[H', W']`` (resized) or None, and
        the pipeline's stats; ``H', W'`` = :func:`output_size`.
    """
    import torch

    from cassr_cli.io.alpha import fill_transparent_colors, is_fully_opaque, resize_alpha
    from cassr_cli.runtime.memory import check_host_memory
    from cassr_cli.runtime.seeding import image_seed

    out_h, out_w = output_size(decoded.height, decoded.width, config.scale)
    native = pipeline.activation.scale
    check_host_memory(
        out_h,
        out_w,
        native_pixels=decoded.height * decoded.width * native * native,
        diffusion=pipeline.diffusion is not None,
        max_host_memory_gb=config.max_host_memory_gb,
    )
    rgb = decoded.rgb
    if decoded.alpha is not None and not is_fully_opaque(decoded.alpha):
        rgb = fill_transparent_colors(rgb, decoded.alpha)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()
    generator = torch.Generator("cpu").manual_seed(image_seed(config.seed, key))
    result = pipeline(tensor, out_size=(out_h, out_w), generator=generator, progress=progress)
    out_rgb = result.image[0].permute(1, 2, 0).contiguous().numpy()
    out_alpha = None
    if decoded.alpha is not None:
        out_alpha = resize_alpha(decoded.alpha, out_h, out_w)
    return out_rgb, out_alpha, dict(result.stats)


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(out_h, out_w)`` for an input and a scale: rounded to whole pixels, at least 1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


class ClaimLostError(Exception):
    """The output's claim was taken over by another process (its lease ran out): not written here."""


def encode_and_write(
    planned: PlannedOutput,
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    decoded: DecodedImage,
    config: UpscaleConfig,
    *,
    claim: Claim | None = None,
    claims: Claims | None = None,
) -> float:
    """Encode and write one output atomically; with a claim, only while the claim is still held."""
    from cassr_cli.io.image import encode_image, write_atomic

    start = time.perf_counter()
    data = encode_image(
        rgb,
        alpha,
        fmt=planned.fmt,
        bit_depth=decoded.bit_depth,
        is_gray=decoded.is_gray,
        quality=config.quality,
        icc_profile=decoded.icc_profile,
        exif=decoded.exif,
    )
    if claim is not None and claims is not None and not claims.holds(claim):
        raise ClaimLostError
    write_atomic(planned.output, data)
    return time.perf_counter() - start


def finish_write(
    result: ImageResult,
    claim: Claim,
    future: Future[float],
    claims: Claims,
    events: BatchEvents,
    summary: BatchSummary,
) -> None:
    try:
        seconds = future.result()
        result.stats["write"] = {"seconds": seconds}
        result.seconds += seconds
    except ClaimLostError:
        result.status = "skipped"
        result.error = IN_PROGRESS_ELSEWHERE
    except Exception as err:
        result.status = "failed"
        result.output = None
        result.error = describe_failure(err, Path(result.input))
        logger.debug("write failure", exc_info=True)
    finally:
        claims.release(claim)
    result.stats["host_peak_rss_bytes"] = peak_rss_bytes()
    summary.results.append(result)
    events.image_finished(result)


def stop_on_device_failure(err: BaseException) -> None:
    """A GPU failure other than out-of-memory leaves the CUDA context unusable: stop the batch (exit 3)
    instead of failing every remaining image the same way."""
    if "torch" not in sys.modules:
        return
    from cassr_cli.runtime.device import is_device_failure

    if is_device_failure(err):
        raise DeviceUnavailableError(
            f"the GPU failed and cannot continue: {err}",
            hint="rerun the command (finished images are kept and skipped); check `cassr doctor` and the driver",
        ) from err


def describe_failure(err: BaseException, path: Path | None = None) -> str:
    """The ``error`` text of a failed result. The failure line and ``--json`` already name the input, so
    a leading ``"{path}: "`` (how the image reader words its errors) is dropped."""
    if isinstance(err, ImageError):
        message = err.message
        if path is not None:
            message = message.removeprefix(f"{path}: ")
        return f"{message} ({err.hint})" if err.hint else message
    if isinstance(err, MemoryError):
        return "out of host memory"
    return f"internal error: {type(err).__name__}: {err}"


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far (None where the platform cannot tell, e.g. Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
