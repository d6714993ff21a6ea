"""The batch runner behind ``cassr upscale`` (and ``cassr eval``, the Python API and the scale-out paths).

* :mod:`.batch` — plan a batch (:func:`plan_batch`) and run it (:func:`run_batch`, :func:`upscale_files`),
  on one pipeline;
* :mod:`.devices` — the same images on one pipeline per device (``--device A,B`` with several images);
* :mod:`.per_image` — the steps of one image both share (claim, read, compute, deliver, write), the
  per-image error policy, and :func:`upscale_decoded`, the pipeline call every path makes;
* :mod:`.records` — what a batch reports: :class:`ImageResult`, :class:`BatchSummary`, :class:`BatchEvents`.

Imports flow ``batch → devices → per_image → records``, then on to ``engine`` only inside functions, so
importing the runner does not import torch. The names below are the runner's public API.
"""

from cassr_cli.runner.batch import plan_batch, run_batch, upscale_files
from cassr_cli.runner.per_image import output_size, upscale_decoded
from cassr_cli.runner.records import (
    BatchEvents,
    BatchPlan,
    BatchSummary,
    ImageResult,
    NullEvents,
    PipelineFactory,
    Status,
)

__all__ = [
    "BatchEvents",
    "BatchPlan",
    "BatchSummary",
    "ImageResult",
    "NullEvents",
    "PipelineFactory",
    "Status",
    "output_size",
    "plan_batch",
    "run_batch",
    "upscale_decoded",
    "upscale_files",
]
