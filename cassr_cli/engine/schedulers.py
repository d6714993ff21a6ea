"""Samplers by name, and the timestep schedule of a refinement that starts from the noised reference.

Schedulers are diffusers' own, built with ``from_config`` on the base model's scheduler config, so the
noise schedule and prediction type (epsilon or v) always come from the model. A fresh scheduler is
created for every image: multistep schedulers keep state between ``step`` calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

TRAILING = {"timestep_spacing": "trailing"}
"""Every sampler uses "trailing" timestep spacing: a schedule of ``N`` entries is
``round(T - i·T/N) - 1`` for ``i = 0 … N-1`` (999, …, T/N - 1 for T = 1000), so it always begins at the
last training timestep. The folder's own spacing (SD 2.1-base: ``leading`` + ``steps_offset = 1``, which
starts a 10-step DDIM run at t = 901, and ``linspace``, which makes a 1-step Euler run start at t = 0)
would break ``strength = 1`` = pure noise and the ``t0 ≈ strength·T`` mapping of :func:`plan_schedule`."""

SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, **TRAILING}),
    "ddim": ("DDIMScheduler", dict(TRAILING)),
    "euler": ("EulerDiscreteScheduler", dict(TRAILING)),
    "euler-a": ("EulerAncestralDiscreteScheduler", dict(TRAILING)),
    "unipc": ("UniPCMultistepScheduler", dict(TRAILING)),
}
"""cassr name → (diffusers class, config overrides)."""


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> Any:
    """A fresh diffusers scheduler called ``name`` configured from the base model's scheduler config."""
    import diffusers

    class_name, overrides = SCHEDULER_CLASSES[name]
    cls = getattr(diffusers, class_name)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    return cls.from_config({**config, **overrides})


@dataclass(frozen=True)
class Schedule:
    """The timesteps one image is denoised over.

    Attributes:
        timesteps: ``[steps]`` timesteps actually run (the first is where the reference is noised to).
        begin_index: index of ``timesteps[0]`` in the scheduler's full schedule.
    """

    timesteps: torch.Tensor
    begin_index: int


def plan_schedule(scheduler: Any, steps: int, strength: float, device: torch.device) -> Schedule:
    """Set ``scheduler`` up so that exactly ``steps`` denoising steps run, starting at ``t0 ≈ strength·T``.

    The full schedule has ``N = round(steps / strength)`` entries (so its spacing matches a from-noise run
    of that length), capped at the model's training timesteps (a finer schedule would repeat timesteps,
    which multistep solvers divide by); the last ``steps`` of them are kept. ``--steps`` therefore is
    the number of UNet evaluations per tile, whatever the strength. With the trailing spacing of
    :data:`TRAILING` the first kept timestep is ``t0 = round(T·steps/N) - 1``: 999 at strength 1 (pure
    noise, every sampler), 499 for 10 steps at strength 0.5, within ``T/N`` of ``strength·T`` always.

    Raises:
        ValueError: ``steps`` exceeds the model's training timesteps.
    """
    train_steps = int(scheduler.config.num_train_timesteps)
    if steps > train_steps:
        raise ValueError(f"{steps} steps exceed the model's {train_steps} training timesteps")
    order = getattr(scheduler, "order", 1)
    total = min(max(steps, round(steps / strength)), train_steps)
    # Some schedulers round a dense linspace onto integer timesteps, which repeats timesteps when the
    # schedule is almost as fine as the training one; shorten it until the kept steps are distinct.
    while True:
        scheduler.set_timesteps(total, device="cpu")
        kept = scheduler.timesteps[(total - steps) * order :]
        if len(torch.unique(kept)) == len(kept) or total == steps:
            break
        total -= 1
    if len(torch.unique(kept)) != len(kept):
        raise ValueError(f"{steps} steps are too many for this scheduler (timesteps repeat)")
    scheduler.set_timesteps(total, device=device)
    begin = (total - steps) * order
    timesteps = scheduler.timesteps[begin:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return Schedule(timesteps=timesteps, begin_index=begin)
