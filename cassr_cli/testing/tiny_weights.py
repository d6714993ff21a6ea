"""Write a complete weights directory with tiny random models, in the real layout.

    python -m cassr_cli.testing.tiny_weights DIR

gives ``DIR/realesrgan-x4plus/RealESRGAN_x4plus.pth`` (a 1-block ESRGAN ×4 that spandrel loads through
its restricted unpickler, like the real file), ``DIR/sd21-base/`` (a diffusers folder shaped like SD
2.1-base — four UNet blocks with attention, a four-level VAE with the 0.18215 latent scale, a CLIP text
encoder and a tokenizer built here from a byte-level vocabulary — saved as ``*.fp16.safetensors``
like the default download) and ``DIR/multiattn-adapter/adapter.safetensors`` (an untrained adapter for
that base), each with the install stamp that ``cassr download-weights`` writes, plus ``DIR/manifest.toml``
describing exactly these files so ``cassr weights verify --manifest DIR/manifest.toml`` works.

Every code path of ``cassr upscale`` — loading included — therefore runs offline in tests and CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

ACTIVATION_NAME = "realesrgan-x4plus"
ACTIVATION_FILE = "RealESRGAN_x4plus.pth"
BASE_NAME = "sd21-base"
ADAPTER_NAME = "multiattn-adapter"
ADAPTER_FILE = "adapter.safetensors"

TEXT_HIDDEN = 32
VOCAB_SIZE = 514  # 256 byte tokens, their end-of-word forms, and the two specials

SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

SD_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.30.0",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
"""``model_index.json`` of an SD 2.x diffusers folder (the tiny weights and the miniature write it)."""


def write_activation(folder: Path, *, seed: int = 0) -> None:
    """A tiny ESRGAN ×4 saved as ``{"params_ema": state_dict}`` (the Real-ESRGAN release format)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": model.state_dict()}, folder / ACTIVATION_FILE)


def write_identity_activation(path: Path, scale: int = 4) -> Path:
    """A spandrel-loadable ×``scale`` model (Real-ESRGAN's compact architecture, ``{"params": …}``) whose
    output is the nearest-neighbour upsample of its input: its last convolution is zero, so only the
    architecture's own nearest-neighbour skip is left. For tests that need exact stage-1 pixels."""
    from spandrel.architectures.Compact import Compact

    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=4, num_conv=1, upscale=scale, act_type="prelu")
    with torch.no_grad():
        model.body[-1].weight.zero_()
        model.body[-1].bias.zero_()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": model.state_dict()}, path)
    return path


def build_tiny_unet(prediction_type: str = "epsilon", *, levels: int = 4):  # noqa: ANN201 - diffusers model
    """A UNet2DConditionModel with SD 2.1-base's structure (4 levels, attention in all but the deepest
    and in the middle, linear projections) at toy width; ``levels=3`` gives a shallower one (latent sizes
    multiples of 4 instead of 8)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 16, 32, 32)[:levels],
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=(2, 2, 4, 4)[:levels],
        use_linear_projection=True,
        norm_num_groups=8,
    )


def build_tiny_vae(*, levels: int = 4):  # noqa: ANN201 - diffusers model
    """An AutoencoderKL with SD's 4 levels (×8 down-sampling) and latent scale, at toy width; ``levels=3``
    down-samples ×4."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8, 16, 16, 16)[:levels],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def build_tiny_text_encoder():  # noqa: ANN201 - transformers model
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=VOCAB_SIZE - 1,
        hidden_act="gelu",
    )
    return CLIPTextModel(config)


def write_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer with a byte-level vocabulary and no merges (every byte is a token)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(str(folder))


def write_base_model(folder: Path, *, seed: int = 0, prediction_type: str = "epsilon", levels: int = 4) -> None:
    """A tiny SD 2.1-base-shaped diffusers folder with ``*.fp16.safetensors`` weights (``levels=3``: a
    ×4 VAE and a UNet with two down-samplings, like the miniature)."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = (
            ("unet", build_tiny_unet(levels=levels)),
            ("vae", build_tiny_vae(levels=levels)),
            ("text_encoder", build_tiny_text_encoder()),
        )
    for name, model in models:
        model.to(torch.float16).save_pretrained(str(folder / name), variant="fp16", safe_serialization=True)
    write_tokenizer(folder / "tokenizer")
    scheduler = dict(SD21_SCHEDULER, prediction_type=prediction_type)
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2), encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps(SD_MODEL_INDEX, indent=2), encoding="utf-8")


def write_adapter(path: Path, base_folder: Path) -> None:
    """An untrained (zero-initialised) multi-attention adapter for the base model in ``base_folder``."""
    from diffusers import UNet2DConditionModel

    from cassr_cli.models.adapter import MultiAttentionAdapter

    unet = UNet2DConditionModel.from_pretrained(str(base_folder / "unet"), variant="fp16")
    adapter = MultiAttentionAdapter.for_unet(unet, rank=4, streams=("lr", "ref"), base_model=BASE_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    adapter.save(path, mode="cached", guidance_timestep=200)


SCEDIT_TEST_DIMS = {"tuner_ratio": 0.5, "hint_channels": 16, "stem_widths": (8, 16, 16)}
"""Small SCEdit tuner sizes for the tiny base models."""


def write_scedit(path: Path, base_folder: Path, *, perturb: float = 0.0, seed: int = 0, base_model: str = BASE_NAME) -> None:
    """An SCEdit tuner for the base model in ``base_folder``: untrained (zero-initialised), or with every
    parameter moved by ``perturb`` × N(0, 1) noise so it acts like a trained one (tests only)."""
    import json as _json

    from diffusers import UNet2DConditionModel

    from cassr_cli.models.scedit import SCEditTuner

    unet = UNet2DConditionModel.from_pretrained(str(base_folder / "unet"), variant="fp16")
    vae_levels = len(_json.loads((base_folder / "vae" / "config.json").read_text())["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuner = SCEditTuner.for_unet(unet, pixel_factor=2 ** (vae_levels - 1), base_model=base_model, **SCEDIT_TEST_DIMS)
        if perturb:
            with torch.no_grad():
                for p in tuner.parameters():
                    p.add_(torch.randn(p.shape) * perturb)
    path.parent.mkdir(parents=True, exist_ok=True)
    tuner.save(path)


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".cassr")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def write_tiny_weights(root: Path, *, seed: int = 0, adapter: bool = True) -> Path:
    """Write the whole tiny weights directory under ``root`` (created if needed); returns ``root``."""
    from cassr_cli.weights.store import write_stamp

    root.mkdir(parents=True, exist_ok=True)
    write_activation(root / ACTIVATION_NAME, seed=seed)
    write_base_model(root / BASE_NAME, seed=seed)
    names = [ACTIVATION_NAME, BASE_NAME]
    if adapter:
        write_adapter(root / ADAPTER_NAME / ADAPTER_FILE, root / BASE_NAME)
        names.append(ADAPTER_NAME)
    manifest_lines = ["# Tiny random test weights written by cassr_cli.testing.tiny_weights", "", "schema = 1", ""]
    kinds = {ACTIVATION_NAME: "activation", BASE_NAME: "base", ADAPTER_NAME: "adapter"}
    for name in names:
        files = _files(root / name)
        write_stamp(root / name, name, files)
        manifest_lines += _manifest_entry(name, kinds[name], files)
    (root / "manifest.toml").write_text("\n".join(manifest_lines) + "\n", encoding="utf-8")
    return root


def _manifest_entry(name: str, kind: str, files: dict[str, tuple[int, str]]) -> list[str]:
    lines = [
        "[[model]]",
        f'name = "{name}"',
        f'kind = "{kind}"',
        "default = true",
        'description = "tiny random weights for tests; not a real model"',
        'licence = { id = "Apache-2.0", name = "Apache License 2.0", note = "random test weights" }',
        "",
    ]
    for rel, (size, sha) in files.items():
        lines += [
            "[[model.files]]",
            f'path = "{rel}"',
            f'url = "https://example.invalid/{name}/{rel}"',
            f"size = {size}",
            f'sha256 = "{sha}"',
            "",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to write the weights directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-adapter", action="store_true", help="skip the untrained adapter")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # this script's own process only: hide cast/shard chatter
    write_tiny_weights(args.directory, seed=args.seed, adapter=not args.no_adapter)


if __name__ == "__main__":
    main()
