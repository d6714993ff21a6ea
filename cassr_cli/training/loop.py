"""The training loop of ``cassr train``, on accelerate: the multi-attention adapter of stage 2
(``model.kind = "multiattn"``) or the SCEdit tuner of the stage-1 activation (``model.kind = "scedit"``).

Frozen: the VAE, UNet and text encoder of the base model and, for the adapter, the activation model
(stored in the mixed-precision dtype). Trained: the adapter or the tuner only (fp32, AdamW, linear
warm-up, optional decay, gradient clipping, gradient accumulation, optional EMA). One
:class:`accelerate.Accelerator` handles devices,
mixed precision, DDP and gradient synchronisation; ``accelerate launch -m cassr_cli train CONFIG.toml``
runs the same code on several GPUs or nodes.

Randomness: the trained module's initialisation, each sample's crop and flips, each micro-batch's degradations,
timesteps and noise come from generators seeded by ``(seed, what, step, micro-batch, rank)``, never from
a global RNG, so a run resumed from a checkpoint continues bit-identically (on the CPU; GPU kernels may
add their own nondeterminism) — the resume state's "RNG state" is the step counter.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cassr_cli._version import __version__
from cassr_cli.engine.components import ADAPTER_FILE, SCEDIT_FILE
from cassr_cli.errors import ConfigError, DeviceUnavailableError
from cassr_cli.training import checkpoint as ckpt
from cassr_cli.training.config import TrainConfig, as_dict, to_toml
from cassr_cli.training.data import (
    CropDataset,
    StepSampler,
    degrade_batch,
    find_training_images,
    generator_for,
    make_loader,
)
from cassr_cli.training.objective import FrozenModels, GuidedUNet, NoiseSchedule, StepInputs, diffusion_loss
from cassr_cli.training.scedit_objective import ConditionedInputs, conditioned_inputs, conditioned_loss

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LogFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a :meth:`Trainer.run` did: the final step, this run's per-step losses (this process's
    micro-batches, mean per optimizer step) and the final model file (adapter or SCEdit tuner)."""

    output_dir: Path
    step: int
    losses: list[float] = field(default_factory=list)
    adapter_path: Path | None = None


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """Learning-rate multiplier per optimizer step: linear warm-up ``(s+1)/W``, then constant, cosine or
    linear decay to 0 at ``max_steps``."""
    warmup, total, kind = config.optim.warmup_steps, config.train.max_steps, config.optim.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return factor


def make_accelerator(config: TrainConfig) -> Any:
    """The run's ``Accelerator`` (mixed precision from the config; devices from ``accelerate launch``)."""
    from accelerate import Accelerator

    precision = config.train.mixed_precision
    if precision == "fp16" and (config.train.cpu or not torch.cuda.is_available()):
        raise DeviceUnavailableError("train.mixed_precision = fp16 needs a CUDA GPU", hint='use "bf16" or "no" on the CPU')
    return Accelerator(mixed_precision=precision, cpu=config.train.cpu)


class Trainer:
    """Models, optimizer and state of one training run.

    Args:
        config: the training config.
        accelerator: an ``accelerate.Accelerator`` (default: :func:`make_accelerator`).
    """

    def __init__(self, config: TrainConfig, accelerator: Any = None) -> None:
        from cassr_cli.engine.activation import ActivationStage
        from cassr_cli.engine.base_model import encode_prompt, load_base_model
        from cassr_cli.engine.components import resolve_activation_path, resolve_model_folder
        from cassr_cli.runtime.device import Runtime

        self.config = config
        self.kind = config.model.kind
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self.device = self.accelerator.device
        self.streams = tuple(config.adapter.streams) if self.kind == "multiattn" else ()
        weights_dir = config.model.weights_dir or None
        activation_path = resolve_activation_path(config.model.activation, weights_dir) if self.kind == "multiattn" else None
        base_folder = resolve_model_folder(config.model.base_model, weights_dir, what="base model")
        self.runtime = Runtime(self.device, WEIGHT_DTYPES[config.train.mixed_precision])
        base = load_base_model(base_folder, self.runtime, name=config.model.base_model)
        activation = None
        if activation_path is not None:
            activation = ActivationStage.from_file(activation_path, self.runtime, tile_size=256, tile_overlap=32)
        text = encode_prompt(base, config.train.prompt, self.device).clone()  # a normal tensor, usable in autograd
        self.frozen = FrozenModels(base, activation, text)
        self.schedule = NoiseSchedule.from_config(base.scheduler_config, self.device)

        self.trainable = self._initial_tuner(base) if self.kind == "scedit" else self._initial_adapter(base.unet)
        self.trainable.to(self.device, torch.float32).requires_grad_(True).train()
        if config.train.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
        wrapped: Any
        if self.kind == "scedit":
            from cassr_cli.models.scedit import TunedUNet

            wrapped = TunedUNet(base.unet, self.trainable)
        else:
            # Inference feeds guidance rows the empty prompt whatever the prompt is; train them the same way.
            guide_text = None if config.train.prompt == "" else encode_prompt(base, "", self.device).clone()
            wrapped = GuidedUNet(
                base.unet, self.trainable, self.streams, config.adapter.guidance_timestep, config.train.guidance_pass, guide_text
            )
        o = config.optim
        optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=o.learning_rate, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(wrapped, optimizer)
        self._guided = wrapped
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
        self.ema = None
        if config.train.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.trainable.parameters(), decay=config.train.ema_decay)
        self.step = 0
        self._saved_step = -1

    @property
    def adapter(self) -> Any:
        """The module being trained: the multi-attention adapter, or the SCEdit tuner."""
        return self.trainable

    @property
    def model_file(self) -> str:
        """File name of the trained module in checkpoints and the output folder."""
        return SCEDIT_FILE if self.kind == "scedit" else ADAPTER_FILE

    def _initial_adapter(self, unet: Any) -> Any:
        from cassr_cli.engine.components import resolve_adapter_path
        from cassr_cli.models.adapter import MultiAttentionAdapter

        a = self.config.adapter
        if a.init_from:
            path = resolve_adapter_path(a.init_from, self.config.model.weights_dir or None)
            adapter, _ = MultiAttentionAdapter.load(path)
            adapter.check_matches(unet, source=f"adapter.init_from {path}")
            if adapter.rank != a.rank or tuple(adapter.streams) != self.streams:
                raise ConfigError(
                    f"adapter.init_from {path} has rank {adapter.rank} and streams {adapter.streams}; "
                    f"the config asks for rank {a.rank} and streams {self.streams}"
                )
            adapter.base_model = self.config.model.base_model
            return adapter
        with torch.random.fork_rng(devices=[]):  # the LoRA init uses the global RNG: seed it privately
            torch.manual_seed(generator_for(self.config.seed, "adapter-init").initial_seed())
            return MultiAttentionAdapter.for_unet(unet, rank=a.rank, streams=self.streams, base_model=self.config.model.base_model)

    def _initial_tuner(self, base: Any) -> Any:
        from cassr_cli.engine.components import resolve_activation_path
        from cassr_cli.models.scedit import SCEditTuner

        s = self.config.scedit
        if s.init_from:
            path = resolve_activation_path(s.init_from, self.config.model.weights_dir or None)
            tuner, _ = SCEditTuner.load(path)
            tuner.check_matches(base.unet, base.vae_factor, source=f"scedit.init_from {path}")
            tuner.base_model = self.config.model.base_model
            return tuner
        with torch.random.fork_rng(devices=[]):  # the MLP init uses the global RNG: seed it privately
            torch.manual_seed(generator_for(self.config.seed, "scedit-init").initial_seed())
            return SCEditTuner.for_unet(
                base.unet,
                pixel_factor=base.vae_factor,
                base_model=self.config.model.base_model,
                tuner_ratio=s.tuner_ratio,
                hint_channels=s.hint_channels,
                stem_widths=s.stem_widths,
            )

    # --- one step --------------------------------------------------------------------------------------
    def make_inputs(self, batch: dict[str, torch.Tensor], step: int, micro: int) -> StepInputs | ConditionedInputs:
        """Device inputs of one micro-batch from the DataLoader: degradations, then ``x_ref`` and the
        guidance latents (adapter) or the up-sampled LR condition (SCEdit), latents, noise."""
        rank = self.accelerator.process_index
        seed = self.config.seed
        hr, lr = degrade_batch(batch, self.config.degradation, generator_for(seed, "degrade", step, micro, rank), self.device)
        noise_generator = generator_for(seed, "noise", step, micro, rank)
        if self.kind == "scedit":
            return conditioned_inputs(self.frozen, hr, lr, self.config.train.timestep_range, noise_generator)
        return self.frozen.inputs(hr, lr, self.streams, self.config.train.timestep_range, noise_generator)

    def _losses(self, model: Any, inputs: StepInputs | ConditionedInputs) -> torch.Tensor:
        if isinstance(inputs, ConditionedInputs):
            return conditioned_loss(model, self.schedule, inputs, self.frozen.text)
        return diffusion_loss(model, self.schedule, inputs, self.frozen.text, self.streams)

    def loss(self, inputs: StepInputs | ConditionedInputs) -> torch.Tensor:
        """Mean diffusion loss of a micro-batch (a scalar with a graph to the trained module)."""
        return self._losses(self.model, inputs).mean()

    @torch.no_grad()
    def evaluate(self, inputs: StepInputs | ConditionedInputs) -> torch.Tensor:
        """Per-sample loss ``[B]`` of the current weights, without gradients (same precision as
        training: under the accelerator's autocast)."""
        with self.accelerator.autocast():
            return self._losses(self._guided, inputs)

    def fit_step(self, micro_batches: Sequence[StepInputs | ConditionedInputs]) -> torch.Tensor:
        """One optimizer step over ``micro_batches`` (gradient accumulation); returns the mean loss
        (detached, on the device: reading it is the caller's choice of when to synchronise)."""
        accelerator = self.accelerator
        total = torch.zeros((), device=self.device)
        for i, inputs in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                loss = self.loss(inputs)
                accelerator.backward(loss / len(micro_batches))
            total += loss.detach()
        if self.config.optim.max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.trainable.parameters(), self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.trainable.parameters())
        self.step += 1
        return total / len(micro_batches)

    # --- state -----------------------------------------------------------------------------------------
    def inference_adapter(self) -> Any:
        """A detached copy of the trained module with the weights inference should use (EMA when on)."""
        module = copy.deepcopy(self.trainable).requires_grad_(False).eval()
        if self.ema is not None:
            self.ema.copy_to(module.parameters())
        return module

    def save_model(self, path: Path, module: Any) -> None:
        """Write ``module`` (from :meth:`inference_adapter`) as the file inference loads, with metadata."""
        if self.kind == "scedit":
            module.save(path, extra=self.adapter_metadata())
        else:
            module.save(path, mode="cached", guidance_timestep=self.config.adapter.guidance_timestep, extra=self.adapter_metadata())

    def state(self) -> dict[str, Any]:
        """The resume state (see ``checkpoint.py``)."""
        accelerator = self.accelerator
        scaler = getattr(accelerator, "scaler", None)
        return {
            "step": self.step,
            "kind": self.kind,
            "adapter": {k: v.detach().to("cpu") for k, v in self.trainable.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"scheme": "derived from (seed, what, step, micro-batch, rank)", "seed": self.config.seed},
            "world_size": accelerator.num_processes,
            "config": as_dict(self.config),
        }

    def load_state(self, folder: Path) -> None:
        """Continue from a checkpoint folder written by :meth:`save_checkpoint`."""
        state = ckpt.read_state(folder)
        saved_kind = state.get("kind", "multiattn")
        if saved_kind != self.kind:
            raise ConfigError(f"{folder} is a {saved_kind} checkpoint; this config trains model.kind = {self.kind!r}")
        self.trainable.load_state_dict(state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            if state["ema"] is None:
                logger.warning("%s has no EMA state; the EMA starts from the resumed weights", folder)
                self.ema.shadow_params = [p.detach().clone() for p in self.trainable.parameters()]
            else:
                self.ema.load_state_dict(state["ema"])
                self.ema.to(self.device)
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        self.step = self._saved_step = int(state["step"])
        _warn_config_changes(state.get("config", {}), as_dict(self.config), folder)
        if state.get("world_size") != self.accelerator.num_processes:
            logger.warning(
                "resuming on %d processes a run saved on %s: the data order differs from an uninterrupted run",
                self.accelerator.num_processes, state.get("world_size"),
            )
        logger.info("resumed from %s at step %d", folder, self.step)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>/`` (main process; every process waits for it)."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        folder = None
        if accelerator.is_main_process:
            module = self.inference_adapter()
            folder = ckpt.write_checkpoint(
                Path(self.config.output_dir),
                self.step,
                model_file=self.model_file,
                save_model=lambda path: self.save_model(path, module),
                state=self.state(),
                config_toml=to_toml(self.config, header=f"cassr {__version__} training config, step {self.step}"),
                keep=self.config.train.keep_checkpoints,
            )
        accelerator.wait_for_everyone()
        self._saved_step = self.step
        return folder

    def adapter_metadata(self) -> dict[str, str]:
        """Metadata stored with the trained module (besides what the module itself writes)."""
        c = self.config
        meta = {
            "trained_steps": str(self.step),
            "weights": "ema" if self.ema is not None else "raw",
            "scale": str(c.data.scale),
            "cassr_version": __version__,
        }
        if self.kind == "scedit":
            meta["training_config"] = to_toml(c)
        else:
            meta["activation"] = c.model.activation
        return meta

    # --- the run ---------------------------------------------------------------------------------------
    def run(self, *, resume: str | None = None, on_log: LogFn | None = None) -> TrainResult:
        """Train to ``train.max_steps`` (from a checkpoint with ``resume``: a folder or ``latest``)."""
        c, accelerator = self.config, self.accelerator
        output_dir = Path(c.output_dir)
        if resume is not None:
            self.load_state(ckpt.find_resume_checkpoint(output_dir, resume))
        result = TrainResult(output_dir, self.step)
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / ckpt.CONFIG_FILE).write_text(to_toml(c, header=f"cassr {__version__} training config"), encoding="utf-8")
        accumulation = c.train.gradient_accumulation_steps
        if self.step < c.train.max_steps:
            dataset = CropDataset(find_training_images(c.data), c.data, c.seed)
            sampler = StepSampler(
                start_step=self.step, max_steps=c.train.max_steps, accumulation=accumulation,
                world=accelerator.num_processes, rank=accelerator.process_index, batch=c.train.batch_size,
            )
            loader = iter(make_loader(dataset, sampler, num_workers=c.data.num_workers, pin_memory=self.device.type == "cuda"))
            pending: list[torch.Tensor] = []
            started = time.perf_counter()
            while self.step < c.train.max_steps:
                step = self.step
                micro = [self.make_inputs(next(loader), step, m) for m in range(accumulation)]
                pending.append(self.fit_step(micro))
                done = self.step
                if done % c.train.log_every == 0 or done == c.train.max_steps:
                    result.losses += self._log(pending, started, on_log)
                    pending, started = [], time.perf_counter()
                if c.train.checkpoint_every and done % c.train.checkpoint_every == 0 and done < c.train.max_steps:
                    self.save_checkpoint()
                if c.validation.every and done % c.validation.every == 0 and done < c.train.max_steps:
                    self.validate()
        result.step = self.step
        if self._saved_step != self.step:
            self.save_checkpoint()
        if c.validation.every:
            self.validate()
        if accelerator.is_main_process:
            final = output_dir / self.model_file
            self.save_model(final, self.inference_adapter())
            result.adapter_path = final
        accelerator.wait_for_everyone()
        return result

    def _log(self, pending: list[torch.Tensor], started: float, on_log: LogFn | None) -> list[float]:
        losses = torch.stack(pending)
        values = losses.tolist()
        mean = float(self.accelerator.reduce(losses.mean(), reduction="mean"))
        seconds = (time.perf_counter() - started) / len(values)
        c = self.config
        samples = c.train.batch_size * c.train.gradient_accumulation_steps * self.accelerator.num_processes
        record = {
            "step": self.step,
            "max_steps": c.train.max_steps,
            "loss": mean,
            "lr": self.lr_scheduler.get_last_lr()[0],
            "seconds_per_step": seconds,
            "samples_per_second": samples / seconds if seconds > 0 else 0.0,
        }
        if self.accelerator.is_main_process:
            with open(Path(c.output_dir) / "train_log.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            logger.info("step %d/%d loss %.5f lr %.2e", self.step, c.train.max_steps, mean, record["lr"])
            if on_log is not None:
                on_log(record)
        return values

    def validate(self) -> list[Path]:
        """Run the validation images through the inference pipeline (main process)."""
        from cassr_cli.training.validation import run_validation

        self.accelerator.wait_for_everyone()
        written: list[Path] = []
        if self.accelerator.is_main_process:
            written = run_validation(self, self.step)
        self.accelerator.wait_for_everyone()
        return written

    def close(self) -> None:
        """Restore the UNet's attention processors (adapter) or remove the tuner's hooks (SCEdit)."""
        self._guided.close()


def _warn_config_changes(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    changed = sorted(k for k in set(_flatten(saved)) | set(_flatten(current)) if _flatten(saved).get(k) != _flatten(current).get(k))
    if changed:
        logger.warning("resuming %s with a changed config: %s", folder, ", ".join(changed))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def train(config: TrainConfig, *, resume: str | None = None, on_log: LogFn | None = None) -> TrainResult:
    """Run ``cassr train``: build a :class:`Trainer` and train to ``train.max_steps``."""
    trainer = Trainer(config)
    try:
        return trainer.run(resume=resume, on_log=on_log)
    finally:
        trainer.close()
