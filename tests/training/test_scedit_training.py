"""``cassr train`` with ``model.kind = "scedit"`` on tiny weights (CPU): only the tuner learns, the loss goes
down, the condition is the up-sampled LR, resume is bit-identical with EMA, checkpoints load as the
stage-1 activation of ``cassr upscale``, bf16 with gradient checkpointing and torchrun work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from training_support import (
    fixed_batch,
    photo,
    train_bf16_with_checkpointing,
    train_config,
    train_on_two_ranks,
    write_photos,
)
from typer.testing import CliRunner

from cassr_cli.training.config import TrainConfig, load_train_config, to_toml
from cassr_cli.training.data import generator_for

TUNER = ("scedit.tuner_ratio=0.5", "scedit.hint_channels=16", "scedit.stem_widths=[8, 16, 16]")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photos(tmp_path_factory.mktemp("scedit-photos"), seed=10)


def _config(tiny_weights: Path, photos: Path, output_dir: Path, *overrides: str) -> TrainConfig:
    return train_config(tiny_weights, photos, output_dir, "model.kind=scedit", *TUNER, *overrides)


def _fixed_inputs(trainer, seed: int = 0):
    from cassr_cli.training.scedit_objective import conditioned_inputs

    hr, lr = fixed_batch(trainer, seed)
    c = trainer.config
    return hr, lr, conditioned_inputs(trainer.frozen, hr, lr, c.train.timestep_range, generator_for(seed, "noise"))


def test_only_the_tuner_learns_and_the_loss_goes_down(tiny_weights, photos, tmp_path):
    from cassr_cli.models.scedit import SCEditTuner
    from cassr_cli.training.loop import Trainer

    trainer = Trainer(_config(tiny_weights, photos, tmp_path, "optim.learning_rate=1e-2", "train.ema_decay=0"))
    try:
        assert isinstance(trainer.trainable, SCEditTuner) and trainer.frozen.activation is None
        trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith("tuner.") for n in trainable)
        unet = trainer.frozen.base.unet
        frozen_before = {n: p.detach().clone() for n, p in unet.named_parameters()}
        _, _, inputs = _fixed_inputs(trainer)
        before = trainer.evaluate(inputs).mean().item()
        losses = [trainer.fit_step([inputs]).item() for _ in range(10)]
        after = trainer.evaluate(inputs).mean().item()
        # The untrained tuner is the frozen model: its loss is the base model's own (measured 1.2 → 0.95).
        assert losses[0] == pytest.approx(before, rel=1e-5)
        assert after < 0.9 * before, (before, after, losses)
        assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
        assert all(torch.equal(p, frozen_before[n]) for n, p in unet.named_parameters())
    finally:
        trainer.close()
    assert all(not block._forward_pre_hooks for block in unet.up_blocks)  # close() removed the hooks


def test_condition_is_the_upsampled_lr_and_latents_follow_the_vae_convention(tiny_weights, photos, tmp_path):
    from cassr_cli.engine.activation import resize_image
    from cassr_cli.engine.vae_tiling import encode_tiled
    from cassr_cli.training.loop import Trainer

    trainer = Trainer(_config(tiny_weights, photos, tmp_path, "train.ema_decay=0"))
    try:
        hr, lr, inputs = _fixed_inputs(trainer)
        assert lr.shape[-1] * 4 == hr.shape[-1] == inputs.condition.shape[-1]
        assert torch.equal(inputs.condition, resize_image(lr, 64, 64))
        tiled, _ = encode_tiled(trainer.frozen.base.vae, hr[:1].cpu(), tile_px=64, device=trainer.device, dtype=torch.float32)
        assert torch.allclose(inputs.latents[:1], tiled, atol=1e-5)
    finally:
        trainer.close()


def test_resume_is_bit_identical_and_checkpoints_run_through_cassr_upscale(tiny_weights, photos, tmp_path):
    """4 steps straight (API, with validation) vs 2 steps + ``--resume latest`` + 2 steps (CLI), with EMA
    and accumulation; then train → save → load → ``cassr upscale --activation``."""
    from cassr_cli.cli.app import app
    from cassr_cli.models.scedit import SCEditTuner
    from cassr_cli.training.loop import train

    common = ("train.gradient_accumulation_steps=2", "train.ema_decay=0.9", "optim.learning_rate=1e-2", "train.checkpoint_every=2")
    straight = train(
        _config(
            tiny_weights, photos, tmp_path / "straight", *common, "train.max_steps=4",
            f"validation.images=['{photos.parent / 'val.png'}']", "validation.every=2", "validation.steps=2", "validation.tile_size=64",
        )
    )
    assert straight.step == 4 and straight.adapter_path == tmp_path / "straight" / "scedit.safetensors"
    with Image.open(tmp_path / "straight/validation/step-4/val.png") as im:  # the activation alone, ×4
        assert im.size == (64, 64)
    assert (tmp_path / "straight/validation/step-2/val.png").is_file()

    resumed_dir = tmp_path / "resumed"
    config_file = tmp_path / "train.toml"
    config_file.write_text(to_toml(_config(tiny_weights, photos, resumed_dir, *common, "train.max_steps=4")))
    runner = CliRunner()
    first = runner.invoke(app, ["train", str(config_file), "--set", "train.max_steps=2", "-q"])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == str(resumed_dir / "scedit.safetensors")
    second = runner.invoke(app, ["train", str(config_file), "--resume", "latest"])
    assert second.exit_code == 0, second.output
    assert "cassr upscale --activation" in second.stderr  # where the tuner goes

    log = [json.loads(line) for line in (resumed_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["loss"] for r in log] == straight.losses
    for name in ("checkpoint-2/scedit.safetensors", "checkpoint-4/scedit.safetensors", "scedit.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(resumed_dir / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    state = torch.load(tmp_path / "straight/checkpoint-4/training_state.pt", weights_only=True)
    final = load_file(str(tmp_path / "straight/checkpoint-4/scedit.safetensors"))
    assert state["kind"] == "scedit"
    assert any(state["adapter"][k].abs().sum() > 0 for k in state["adapter"] if k.endswith("up.weight"))  # it trained
    assert not all(torch.equal(state["adapter"][k], final[k]) for k in final)  # the file holds the EMA weights

    tuner, meta = SCEditTuner.load(resumed_dir / "checkpoint-2/scedit.safetensors")
    assert meta["kind"] == "scedit" and meta["trained_steps"] == "2" and meta["weights"] == "ema"
    assert meta["base_model"] == "sd21-base" and "kind = \"scedit\"" in meta["training_config"]
    assert json.loads(meta["dimensions"])["pixel_factor"] == 8

    # the checkpoint folder, the output folder and the file all work as `cassr upscale --activation`
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(photo(16, 24, 4)).save(source / "photo.png")
    for activation, steps in ((resumed_dir / "checkpoint-2", "0"), (resumed_dir, "1"), (resumed_dir / "scedit.safetensors", "0")):
        out = tmp_path / f"out-{activation.name}"
        result = runner.invoke(
            app,
            [
                "upscale", str(source / "photo.png"), str(out), "--activation", str(activation), "--weights-dir", str(tiny_weights),
                "--steps", steps, "--activation-steps", "3", "--tile-size", "64", "--vae-tile-size", "64", "--json", "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        stats = record["stats"]["activation"]
        assert record["status"] == "ok" and stats["kind"] == "scedit"
        assert stats["steps"] == 3 and stats["unet_calls"] == 3 * -(-stats["tiles"] // 4) and stats["unet_rows"] == 3 * stats["tiles"]
        assert stats["seconds"] > 0 and ("denoise" in record["stats"]) == (steps == "1")
        with Image.open(out / "photo.png") as im:
            assert im.size == (96, 64)

    # an adapter run's checkpoint cannot be resumed as a tuner run
    adapter_run = tmp_path / "adapter-run"
    adapter_config = load_train_config(config_file, ["model.kind=multiattn", f"output_dir={adapter_run}", "adapter.rank=2", "train.max_steps=1"])
    train(adapter_config)
    wrong = runner.invoke(app, ["train", str(config_file), "--resume", str(adapter_run / "checkpoint-1")])
    assert wrong.exit_code == 2 and "multiattn checkpoint" in wrong.output


def test_python_m_cassr_cli_train_scedit_runs_bf16_with_gradient_checkpointing(tiny_weights, photos, tmp_path):
    stdout, log = train_bf16_with_checkpointing(_config(tiny_weights, photos, tmp_path / "run", "train.max_steps=2"), tmp_path)
    assert stdout == str(tmp_path / "run" / "scedit.safetensors")
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)


@pytest.mark.slow
def test_two_processes_under_torchrun_train_one_tuner(tiny_weights, photos, tmp_path):
    config = _config(tiny_weights, photos, tmp_path / "ddp", "train.max_steps=3", "train.gradient_accumulation_steps=2", "train.ema_decay=0")
    ranks = train_on_two_ranks(config, tmp_path)
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert any(ranks[0][k].abs().sum() > 0 for k in ranks[0] if k.endswith("up.weight"))
    assert sorted(p.name for p in (tmp_path / "ddp").glob("checkpoint-*")) == ["checkpoint-3"]
