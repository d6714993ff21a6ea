"""Training measurements for docs/training.md and docs/decisions.md.

Two sub-commands:

``heldout``: the diffusion loss of adapters (or SCEdit tuners, with a ``model.kind = "scedit"`` config) on
held-out photos — fixed crops, degradations, timesteps and noise (all from ``--seed``), identical for every
file compared, so differences are paired::

    python benchmarks/train_heldout.py heldout --config docs/examples/train-tiny-cpu.toml \\
        --images '../shared/testdata/realsrset/frog.png' ... \\
        --adapter untrained --adapter runs/tiny-cpu/adapter.safetensors

``step-cost``: where the time of one training sample goes (data, degradation, activation ``x_ref``, VAE
encodes, UNet forward+backward) on real-size architectures with random weights (SD 2.1-base UNet and
VAE, RealESRGAN_x4plus RRDBNet) on this machine, plus FLOPs at the 512-pixel training crop counted with
``torch.utils.flop_counter`` on the meta device — the numbers behind the ``cassr train prepare`` decision —
and the same FLOPs and saved activations for an SD 2.1-base-size SCEdit tuner::

    python benchmarks/train_heldout.py step-cost --crop 128
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cassr_cli.training.config import load_train_config  # noqa: E402
from cassr_cli.training.data import (  # noqa: E402
    CropDataset,
    TrainingImage,
    degrade_batch,
    generator_for,
)

# --- held-out loss ------------------------------------------------------------------------------------


def heldout(args: argparse.Namespace) -> dict[str, object]:
    from cassr_cli.io.discover import discover
    from cassr_cli.models.adapter import MultiAttentionAdapter
    from cassr_cli.models.scedit import SCEditTuner
    from cassr_cli.training.loop import Trainer
    from cassr_cli.training.scedit_objective import conditioned_inputs

    config = load_train_config(Path(args.config), args.set or [])
    images = [TrainingImage(item.path) for item in discover(args.images, recursive=True).items]
    trainer = Trainer(config)
    dataset = CropDataset(images, config.data, args.seed)
    batch_size = config.train.batch_size
    batches = []
    for k in range(args.batches):  # the same crops, degradations, timesteps and noise for every adapter
        raw = [dataset[k * batch_size + j] for j in range(batch_size)]
        batch = {key: torch.stack([r[key] for r in raw]) for key in ("hr", "lr", "paired")}
        hr, lr = degrade_batch(batch, config.degradation, generator_for(args.seed, "heldout-degrade", k), trainer.device)
        noise = generator_for(args.seed, "heldout-noise", k)
        if trainer.kind == "scedit":
            batches.append(conditioned_inputs(trainer.frozen, hr, lr, config.train.timestep_range, noise))
        else:
            batches.append(trainer.frozen.inputs(hr, lr, trainer.streams, config.train.timestep_range, noise))
    initial = {k: v.clone() for k, v in trainer.adapter.state_dict().items()}
    load = SCEditTuner.load if trainer.kind == "scedit" else MultiAttentionAdapter.load
    per_sample: dict[str, torch.Tensor] = {}
    for name in args.adapter:
        if name == "untrained":
            trainer.adapter.load_state_dict(initial)
        else:
            loaded, _ = load(Path(name))
            trainer.adapter.load_state_dict(loaded.state_dict())
        per_sample[name] = torch.cat([trainer.evaluate(b).cpu() for b in batches])
    trainer.close()
    first = args.adapter[0]
    rows = {}
    for name, losses in per_sample.items():
        diff = losses - per_sample[first]
        rows[name] = {
            "mean_loss": float(losses.mean()),
            "stderr": float(losses.std() / math.sqrt(len(losses))),
            f"mean_diff_vs_{first}": float(diff.mean()),
            "diff_stderr": float(diff.std() / math.sqrt(len(diff))) if name != first else 0.0,
            "samples_better": int((diff < 0).sum()),
        }
    return {"samples": len(per_sample[first]), "images": len(images), "seed": args.seed, "adapters": rows}


# --- step cost ----------------------------------------------------------------------------------------


def _timed(fn, repeats: int) -> float:
    """The fastest of ``repeats`` runs after a warm-up (other load on a shared machine only adds time)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def step_cost(args: argparse.Namespace) -> dict[str, object]:
    from spandrel import ModelLoader
    from torch.utils.flop_counter import FlopCounterMode

    from cassr_cli.engine.activation import ActivationStage
    from cassr_cli.models.adapter import MultiAttentionAdapter
    from cassr_cli.runtime.device import Runtime
    from cassr_cli.testing.architectures import (
        SD21_TEXT_HIDDEN,
        realesrgan_x4plus_state_dict,
        sd21_base_unet,
        sd21_base_vae,
    )
    from cassr_cli.testing.tiny_weights import SD21_SCHEDULER
    from cassr_cli.training.objective import FrozenModels, GuidedUNet, NoiseSchedule, diffusion_loss

    crop, streams = args.crop, ("lr", "ref")
    runtime = Runtime(torch.device("cpu"), torch.float32)
    config = load_train_config(None, [f"data.crop_size={crop}", "data.num_workers=0", "train.batch_size=1"])
    images = [TrainingImage(p) for p in sorted(Path(args.images).glob("*")) if p.suffix.lower() in (".png", ".jpg")]
    dataset = CropDataset(images, config.data, 0)
    out: dict[str, object] = {"crop": crop, "threads": torch.get_num_threads()}
    n = iter(range(10**6))
    seconds = {"read+crop": _timed(lambda: dataset[next(n)], args.repeats)}
    sample = dataset[0]
    batch = {k: v[None] for k, v in sample.items()}
    seconds["degrade"] = _timed(lambda: degrade_batch(batch, config.degradation, generator_for(0, "d"), runtime.device), args.repeats)
    hr, lr = degrade_batch(batch, config.degradation, generator_for(0, "d"), runtime.device)

    descriptor = ModelLoader().load_from_state_dict(realesrgan_x4plus_state_dict())
    activation = ActivationStage(descriptor, scale=4, runtime=runtime, dtype=torch.float32, tile_size=256, tile_overlap=32)
    vae = sd21_base_vae()
    vae.requires_grad_(False).eval()
    unet = sd21_base_unet()
    unet.requires_grad_(False).eval()
    base = type("Base", (), {"vae": vae})()
    frozen = FrozenModels(base, activation, torch.zeros(1, 77, SD21_TEXT_HIDDEN))
    seconds["activation x_ref"] = _timed(lambda: frozen.reference(lr, crop, crop), args.repeats)
    seconds["vae encode x3"] = 3 * _timed(lambda: frozen.encode(hr), args.repeats)
    inputs = frozen.inputs(hr, lr, streams, (0, 999), generator_for(0, "n"))
    adapter = MultiAttentionAdapter.for_unet(unet, rank=16)
    schedule = NoiseSchedule.from_config(SD21_SCHEDULER, runtime.device)
    layout_seconds = {}
    for layout in ("separate", "batched"):
        guided = GuidedUNet(unet, adapter, streams, 200, layout)

        def unet_step(guided: GuidedUNet = guided) -> None:
            loss = diffusion_loss(guided, schedule, inputs, frozen.text, streams).mean()
            loss.backward()
            adapter.zero_grad(set_to_none=True)

        layout_seconds[layout] = _timed(unet_step, max(1, args.repeats // 2))
        guided.close()
    seconds["unet fwd+bwd"] = layout_seconds["separate"]
    total = sum(seconds.values())
    out["seconds_per_sample"] = {k: round(v, 4) for k, v in seconds.items()}
    out["fraction"] = {k: round(v / total, 4) for k, v in seconds.items()}
    out["unet_fwd_bwd_seconds_by_guidance_pass"] = {k: round(v, 4) for k, v in layout_seconds.items()}

    # FLOPs at the real training crop (512 px, latent 64²), counted on the meta device.
    meta = torch.device("meta")
    with torch.device(meta):
        from spandrel.architectures.ESRGAN import ESRGAN

        rrdb = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
        lr512 = torch.zeros(1, 3, 128, 128)
        px512 = torch.zeros(1, 3, 512, 512)
    vae_meta, unet_meta = sd21_base_vae(device=meta), sd21_base_unet(device=meta)
    unet_meta.requires_grad_(False)
    with torch.device(meta):
        adapter_meta = MultiAttentionAdapter.for_unet(unet_meta, rank=16)
        z = torch.zeros(1, 4, 64, 64)
        text = torch.zeros(1, 77, SD21_TEXT_HIDDEN)
    flops = {}
    with FlopCounterMode(display=False) as counter:
        rrdb(lr512)
    flops["activation x_ref"] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        vae_meta.encode(px512)
    flops["vae encode x3"] = 3 * counter.get_total_flops()
    for layout in ("separate", "batched"):
        guided_meta = GuidedUNet(unet_meta, adapter_meta, streams, 200, layout)
        with FlopCounterMode(display=False) as counter:
            pred = guided_meta(z, torch.zeros(1, dtype=torch.long, device=meta), {"lr": z, "ref": z}, text)
        forward = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            pred.float().pow(2).mean().backward()
        flops[f"unet fwd+bwd ({layout})"] = forward + counter.get_total_flops()
        guided_meta.close()
    from cassr_cli.models.scedit import SCEditTuner, TunedUNet

    with torch.device(meta):
        tuned = TunedUNet(unet_meta, SCEditTuner.for_unet(unet_meta, pixel_factor=8))
    with FlopCounterMode(display=False) as counter:
        pred = tuned(z, torch.zeros(1, dtype=torch.long, device=meta), text, px512)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        pred.float().pow(2).mean().backward()
    flops["scedit: vae encode (HR target)"] = flops["vae encode x3"] // 3
    flops["scedit: unet + tuner fwd+bwd"] = forward + counter.get_total_flops()
    tuned.close()
    out["tflop_per_sample_at_512"] = {k: round(v / 1e12, 3) for k, v in flops.items()}
    out["saved_activation_gib_per_sample_at_512_bf16"] = saved_activations(unet_meta, adapter_meta, streams)
    out["scedit_saved_activation_gib_per_sample_at_512_bf16"] = scedit_saved_activations(unet_meta)
    return out


def scedit_saved_activations(unet) -> dict[str, float]:
    """As :func:`saved_activations`, for the UNet with an SD 2.1-base-size SCEdit tuner (the backward pass
    runs through the tuner and the decoder only: the encoder half of the UNet has nothing to train)."""
    from cassr_cli.models.scedit import SCEditTuner, TunedUNet
    from cassr_cli.testing.architectures import SD21_TEXT_HIDDEN

    meta = torch.device("meta")
    unet.to(torch.bfloat16)
    with torch.device(meta):
        tuner = SCEditTuner.for_unet(unet, pixel_factor=8).to(torch.bfloat16)
        z = torch.zeros(1, 4, 64, 64, dtype=torch.bfloat16)
        text = torch.zeros(1, 77, SD21_TEXT_HIDDEN, dtype=torch.bfloat16)
        condition = torch.zeros(1, 3, 512, 512, dtype=torch.bfloat16)
    weights = {p.untyped_storage()._cdata for p in (*unet.parameters(), *tuner.parameters())}
    tokens = {64 * 64 >> (2 * level) for level in range(4)}
    result = {}
    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        tuned = TunedUNet(unet, tuner)
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
            storage = t.untyped_storage()
            attention = t.ndim >= 3 and t.shape[-2] in tokens and t.shape[-1] in {t.shape[-2], 3 * t.shape[-2], 77}
            if storage._cdata not in weights and not attention:
                saved[storage._cdata] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            tuned(z, torch.zeros(1, dtype=torch.long, device=meta), text, condition)
        tuned.close()
        result["tuner" + (" + gradient checkpointing" if checkpointing else "")] = round(sum(saved.values()) / 2**30, 3)
    unet.disable_gradient_checkpointing()
    return result


def saved_activations(unet, adapter, streams: tuple[str, ...]) -> dict[str, float]:
    """GiB of tensors autograd keeps for the backward pass, per sample at a 64² latent in bf16, counted
    on the meta device with ``saved_tensors_hooks``: weights are excluded (resident anyway) and so are
    attention-probability matrices ``[heads, Lq, Lk]`` (the meta device runs SDPA's math path; the fused
    CUDA kernels keep only a log-sum-exp per query). Checkpointed blocks save nothing until recomputed."""
    from cassr_cli.testing.architectures import SD21_TEXT_HIDDEN
    from cassr_cli.training.objective import GuidedUNet

    meta = torch.device("meta")
    unet.to(torch.bfloat16)
    weights = {p.untyped_storage()._cdata for p in unet.parameters()}
    with torch.device(meta):
        z = torch.zeros(1, 4, 64, 64)
        text = torch.zeros(1, 77, SD21_TEXT_HIDDEN, dtype=torch.bfloat16)
    tokens = {64 * 64 >> (2 * level) for level in range(4)}
    result = {}
    for layout in ("separate", "batched"):
        for checkpointing in (False, True):
            if checkpointing:
                unet.enable_gradient_checkpointing()
            else:
                unet.disable_gradient_checkpointing()
            guided = GuidedUNet(unet, adapter, streams, 200, layout)
            saved: dict[int, int] = {}

            def pack(t: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
                storage = t.untyped_storage()
                attention = t.ndim >= 3 and t.shape[-2] in tokens and t.shape[-1] in {t.shape[-2], 3 * t.shape[-2], 77}
                if storage._cdata not in weights and not attention:
                    saved[storage._cdata] = storage.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                guided(z, torch.zeros(1, dtype=torch.long, device=meta), {s: z for s in streams}, text)
            guided.close()
            name = f"{layout}{' + gradient checkpointing' if checkpointing else ''}"
            result[name] = round(sum(saved.values()) / 2**30, 3)
    unet.disable_gradient_checkpointing()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("heldout", help="held-out diffusion loss of adapters")
    h.add_argument("--config", required=True, help="the training config (data, model and adapter settings)")
    h.add_argument("--set", action="append", help="config override KEY=VALUE (repeatable)")
    h.add_argument("--images", nargs="+", required=True, help="held-out HR images: files, folders or globs")
    h.add_argument("--adapter", action="append", required=True, help="'untrained' or an adapter file (repeatable)")
    h.add_argument("--batches", type=int, default=16)
    h.add_argument("--seed", type=int, default=1234)
    c = sub.add_parser("step-cost", help="time and FLOPs per training sample, by part")
    c.add_argument("--crop", type=int, default=128, help="HR crop for the timed CPU run")
    c.add_argument("--images", default=str(REPO.parent / "shared" / "testdata" / "skimage"))
    c.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    result = heldout(args) if args.command == "heldout" else step_cost(args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
