"""Where a refinement starts and what the samplers do with the model's output, checked against numbers
computed here independently of the engine: ᾱ from SD 2.1-base's betas (numpy, float64), the start
timesteps worked out by hand from the trailing spacing, and an oracle UNet that knows the clean latent.

The engine under test is stage 2's denoising assembled from its real parts as ``DiffusionStage`` assembles
it (noise, :func:`plan_schedule`, ``add_noise`` at the first timestep, the multi-attention tile model, the
tiled denoiser, diffusers' loop) with the real diffusers schedulers; only the UNet is replaced, by a module
that records its inputs or answers exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cassr_cli.engine.guided_unet import GuidanceSettings, MultiAttentionModel, TextConditioning
from cassr_cli.engine.sampling import Noise, sample
from cassr_cli.engine.schedulers import SCHEDULER_CLASSES, make_scheduler, plan_schedule
from cassr_cli.engine.tiled_denoiser import TiledDenoiser
from cassr_cli.testing.tiny_weights import SD21_SCHEDULER
from cassr_cli.tiling.plan import plan_tiles
from cassr_cli.training.objective import NoiseSchedule

SCHEDULERS = tuple(SCHEDULER_CLASSES)
T = 1000
SIZE = 16  # latent pixels: one tile covers the latent


def alphas_cumprod() -> np.ndarray:
    """ᾱ_t of SD 2.1-base (scaled-linear betas 0.00085 → 0.012 over 1000 steps), float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, T, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


ALPHAS = alphas_cumprod()

# (steps, strength) → first timestep. Worked out by hand: N = round(steps / strength) entries spaced
# 1000/N apart from 999 down ("trailing"), the last `steps` of them kept; t0 = round(1000·steps/N) - 1.
START_TABLE = [
    (10, 1.0, 999),  # pure noise: 999 for every sampler (DDIM with SD's "leading" spacing started at 901)
    (1, 1.0, 999),  # one step from noise (Euler with "linspace" spacing started at t = 0)
    (10, 0.5, 499),  # the default
    (20, 0.3, 298),  # N = 67: round(1000·20/67) - 1 = round(298.5…) - 1
    (3, 0.7, 749),  # N = 4: 999, 749, 499, 249 → keep the last 3
    (4, 0.25, 249),  # N = 16: round(1000·4/16) - 1
]


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet: records ``(sample, timestep)`` of each call and predicts zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, float]] = []

    def forward(self, sample, timestep, encoder_hidden_states=None, cross_attention_kwargs=None):  # noqa: ANN001, ANN201
        self.calls.append((sample.detach().clone(), float(timestep)))
        return SimpleNamespace(sample=torch.zeros_like(sample))


class OracleUNet(torch.nn.Module):
    """Answers exactly for a known clean latent ``x0``: from the (VP-scaled) input ``x_t`` at ``t`` it
    recovers ``ε = (x_t - √ᾱ·x0) / √(1-ᾱ)`` and returns ε or ``v = √ᾱ·ε - √(1-ᾱ)·x0``, with ᾱ from
    :func:`alphas_cumprod` (not from the scheduler)."""

    def __init__(self, x0: torch.Tensor, prediction_type: str) -> None:
        super().__init__()
        self.x0, self.prediction_type = x0.double(), prediction_type

    def forward(self, sample, timestep, encoder_hidden_states=None, cross_attention_kwargs=None):  # noqa: ANN001, ANN201
        a = float(ALPHAS[int(round(float(timestep)))])
        eps = (sample.double() - a**0.5 * self.x0) / (1.0 - a) ** 0.5
        out = eps if self.prediction_type == "epsilon" else a**0.5 * eps - (1.0 - a) ** 0.5 * self.x0
        return SimpleNamespace(sample=out.float())


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    reference = torch.randn(1, 4, SIZE, SIZE, generator=g) * 0.8
    clean = torch.randn(1, 4, SIZE, SIZE, generator=g) * 0.8
    return reference, clean


def _denoise(unet, scheduler_name, reference, steps, strength, config=SD21_SCHEDULER, seed=0):  # noqa: ANN001, ANN202
    """Stage 2's denoising without guidance streams, one tile covering the latent."""
    noise = Noise.draw(tuple(reference.shape), (), torch.Generator().manual_seed(seed), torch.device("cpu"))
    empty = torch.zeros(1, 77, 8)
    scheduler = make_scheduler(scheduler_name, config)
    schedule = plan_schedule(scheduler, steps, strength, torch.device("cpu"))
    latent = scheduler.add_noise(reference, noise.start, schedule.timesteps[:1])
    model = MultiAttentionModel(
        unet,
        TextConditioning(cond=empty, guide=empty),
        GuidanceSettings(streams=(), log_weights=()),
        alphas_cumprod=scheduler.alphas_cumprod,
        dtype=torch.float32,
    )
    denoiser = TiledDenoiser(model, plan_tiles(SIZE, SIZE, SIZE, 0, align=1, multiple=8), tile_batch=1)
    latent = sample(denoiser, scheduler, latent, schedule.timesteps, generator=torch.Generator().manual_seed(seed + 1))
    return latent, noise


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize(("steps", "strength", "t0"), START_TABLE)
def test_refinement_starts_from_the_reference_noised_to_the_expected_timestep(scheduler, steps, strength, t0):
    """The UNet's first input is √ᾱ_t0·g_ref + √(1-ᾱ_t0)·ε at t0 of the hand-made table (ᾱ from the
    betas), it is called exactly ``steps`` times, and t0 is within one schedule spacing of strength·T."""
    reference, _ = _scene()
    unet = RecordingUNet()
    _, noise = _denoise(unet, scheduler, reference, steps, strength)
    assert len(unet.calls) == steps
    first_input, first_t = unet.calls[0]
    assert first_t == t0
    spacing = T / round(steps / strength)
    assert abs(t0 + 1 - strength * T) <= spacing
    a = ALPHAS[t0]
    expected = a**0.5 * reference.double() + (1.0 - a) ** 0.5 * noise.start.double()
    torch.testing.assert_close(first_input.double(), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_schedule_at_strength_one_is_a_from_noise_run(scheduler):
    """Strength 1: t0 = 999 and the steps are spaced evenly down to 1000/steps - 1 (the trailing
    from-noise schedule), for every sampler."""
    sched = make_scheduler(scheduler, SD21_SCHEDULER)
    timesteps = plan_schedule(sched, 10, 1.0, torch.device("cpu")).timesteps
    assert [round(float(t)) for t in timesteps] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_an_exact_model_output_denoises_to_the_clean_latent(scheduler, prediction_type):
    """With a UNet that answers exactly for a clean latent x0 (ε or v, per the base model's
    parameterisation), every sampler ends at x0 — DDIM at t = 0 of SD's schedule instead, which it
    does not leave (``set_alpha_to_one = False``): √ᾱ_0·x0 + √(1-ᾱ_0)·ε with the ε the oracle saw at
    the start (DDIM keeps it). Reading v as ε (or the reverse) ends far from it."""
    reference, clean = _scene()
    config = dict(SD21_SCHEDULER, prediction_type=prediction_type)
    latent, noise = _denoise(OracleUNet(clean, prediction_type), scheduler, reference, 6, 0.6, config)
    expected = clean.double()
    if scheduler == "ddim":
        t0 = 599  # N = 10: round(1000·6/10) - 1
        a, a_end = ALPHAS[t0], ALPHAS[0]
        eps = (a**0.5 * (reference.double() - clean.double())) / (1 - a) ** 0.5 + noise.start.double()
        expected = a_end**0.5 * clean.double() + (1 - a_end) ** 0.5 * eps
    torch.testing.assert_close(latent.double(), expected, rtol=0, atol=2e-3)
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    wrong, _ = _denoise(OracleUNet(clean, other), scheduler, reference, 6, 0.6, config)
    assert float((wrong - clean).abs().max()) > 0.1


def test_v_prediction_training_target_is_sqrt_alpha_eps_minus_sqrt_one_minus_alpha_x0():
    """``cassr train``'s regression target for a v-prediction base, against ᾱ computed here."""
    g = torch.Generator().manual_seed(5)
    latent, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    timesteps = torch.tensor([0, 499, 999])
    schedule = NoiseSchedule.from_config(dict(SD21_SCHEDULER, prediction_type="v_prediction"), torch.device("cpu"))
    target = schedule.target(latent, noise, timesteps)
    a = torch.tensor(ALPHAS[timesteps.numpy()]).view(-1, 1, 1, 1)
    expected = a.sqrt() * noise.double() - (1 - a).sqrt() * latent.double()
    torch.testing.assert_close(target.double(), expected, rtol=0, atol=1e-5)
    noisy = schedule.add_noise(latent, noise, timesteps)
    torch.testing.assert_close(noisy.double(), a.sqrt() * latent.double() + (1 - a).sqrt() * noise.double(), rtol=0, atol=1e-5)
    # and ε for an epsilon base
    eps_schedule = NoiseSchedule.from_config(SD21_SCHEDULER, torch.device("cpu"))
    assert torch.equal(eps_schedule.target(latent, noise, timesteps), noise)
