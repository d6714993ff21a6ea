"""Models for benchmarks: real-size architectures with random weights (no download), or tiny ones.

``real``:
* SD 2.1-base UNet and VAE from their published configs (:mod:`cassr_cli.testing.architectures`);
* the SD 2.x text encoder (OpenCLIP ViT-H/14 text tower as ``CLIPTextModel``: hidden 1024, 23 layers,
  16 heads, MLP 4096, vocabulary 49,408), real size;
* RealESRGAN_x4plus (RRDBNet, 64 features, 23 blocks) loaded by spandrel from a random state dict;
* diffusers' ``stabilityai/stable-diffusion-x4-upscaler`` architecture (UNet with 7 input channels and a
  noise-level class embedding, 3-level VAE with latent scale 0.08333, DDPM low-res scheduler, DDIM
  v-prediction scheduler), from its published configuration.

``tiny``: the toy models of :mod:`cassr_cli.testing.tiny_weights` (and a toy x4 upscaler), for the smoke
test. ``meta``: the real-size architectures on PyTorch's meta device (shapes only), for
:mod:`benchmarks.dryrun`.

The tokenizer is the real CLIP BPE tokenizer when ``../shared/weights/clip_tokenizer`` is present (built
offline as ``../shared/weights/SOURCES.md`` describes), else the byte-level toy tokenizer.

Random initialisation never touches the global RNG (``torch.random.fork_rng`` with a fixed seed).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cassr_cli.engine.base_model import BaseModel, quiet_loading
from cassr_cli.testing.tiny_weights import SD21_SCHEDULER

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BPE = REPO_ROOT.parent / "shared" / "weights" / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"

SD21_SCHEDULER_CONFIG: dict[str, Any] = SD21_SCHEDULER
"""SD 2.1-base's ``scheduler/scheduler_config.json``."""

SD2_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
"""SD 2.x ``text_encoder/config.json`` (the OpenCLIP ViT-H text tower, penultimate layer kept)."""

X4_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [256, 512, 512, 1024],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 7,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": 1000,
    "only_cross_attention": [True, True, True, False],
    "out_channels": 4,
    "sample_size": 128,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
"""``stabilityai/stable-diffusion-x4-upscaler`` UNet: Stability's ``x4-upscaling.yaml`` (model_channels 256,
channel_mult 1,2,2,4, attention at down-sampling 2/4/8, self-attention disabled in the first three levels,
8 heads, context 1024, 1000 noise-level classes, 7 = 4 latent + 3 image input channels) in diffusers form."""

X4_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": 0.08333,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
}
"""The x4 upscaler's VAE (``ch_mult 1,2,4``: ×4 down-sampling; mid-block attention at latent resolution)."""

X4_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
X4_LOW_RES_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "num_train_timesteps": 1000,
}
X4_MAX_NOISE_LEVEL = 350


@contextlib.contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Deterministic random initialisation on ``device`` without touching the caller's RNG state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


def _frozen(module: Any) -> Any:
    module.requires_grad_(False)
    module.eval()
    return module


# --- tokenizer ----------------------------------------------------------------------------------------


def build_tokenizer(bpe_path: Path | None = SHARED_BPE) -> tuple[Any, str]:
    """The CLIP tokenizer (real vocabulary from the BPE file when it exists, else the byte-level toy one)
    and a description of which one it is."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if bpe_path is not None and bpe_path.is_file():
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            with gzip.open(bpe_path) as f:
                lines = f.read().decode("utf-8").split("\n")
            merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
            vocab = list(bytes_to_unicode().values())
            vocab += [v + "</w>" for v in vocab]
            vocab += ["".join(m) for m in merges]
            vocab += ["<|startoftext|>", "<|endoftext|>"]
            (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
            (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
            tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
            return tok, f"CLIP BPE tokenizer (vocab {len(vocab)}) from {bpe_path}"
        from cassr_cli.testing.tiny_weights import write_tokenizer

        write_tokenizer(folder)
        return CLIPTokenizer.from_pretrained(str(folder)), "byte-level toy tokenizer (cassr_cli.testing.tiny_weights)"


# --- cassr ------------------------------------------------------------------------------------------


@dataclass
class CassrComponents:
    """One precision's cassr models: the base model and the stage-1 spandrel descriptor."""

    base: BaseModel
    activation: Any
    dtype: torch.dtype
    description: dict[str, str]

    def to(self, device: torch.device | str) -> None:
        """Move every model (parking on the CPU keeps device memory measurements per variant honest)."""
        for module in (self.base.unet, self.base.vae, self.base.text_encoder):
            module.to(device)
        self.activation.to(device)


def _text_encoder(size: str, device: torch.device) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    if size == "tiny":
        from cassr_cli.testing.tiny_weights import build_tiny_text_encoder

        return build_tiny_text_encoder()
    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**SD2_TEXT_CONFIG))


def _activation_descriptor(size: str, seed: int) -> Any:
    from spandrel import ModelLoader

    from cassr_cli.testing.architectures import realesrgan_x4plus_state_dict

    if size == "tiny":
        from spandrel.architectures.ESRGAN import ESRGAN

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict()
    else:
        state = realesrgan_x4plus_state_dict(seed)
    return ModelLoader(device="cpu").load_from_state_dict(state)


def build_cassr(size: str, device: torch.device, dtype: torch.dtype, *, tokenizer: Any, seed: int = 0) -> CassrComponents:
    """cassr's models at ``size`` (``real``, ``tiny`` or ``meta``) in ``dtype`` on ``device``."""
    from cassr_cli.engine.activation import choose_dtype
    from cassr_cli.testing.architectures import sd21_base_unet, sd21_base_vae

    build_device = torch.device("meta") if size == "meta" else device
    with quiet_loading(), seeded(build_device, seed):
        if size == "tiny":
            from cassr_cli.testing.tiny_weights import build_tiny_unet, build_tiny_vae

            unet, vae = build_tiny_unet(), build_tiny_vae()
        else:
            unet = sd21_base_unet(device=build_device, dtype=dtype)
            vae = sd21_base_vae(device=build_device, dtype=dtype)
        text = _text_encoder("tiny" if size == "tiny" else "real", build_device)
    unet, vae, text = (_frozen(m.to(build_device, dtype)) for m in (unet, vae, text))
    descriptor = _activation_descriptor(size, seed)
    act_dtype = choose_dtype(dtype, supports_half=descriptor.supports_half, supports_bf16=descriptor.supports_bfloat16, device=device)
    descriptor.to(device=build_device, dtype=act_dtype)
    descriptor.eval()
    base = BaseModel(unet, vae, text, tokenizer, dict(SD21_SCHEDULER_CONFIG), f"sd21-base ({size}, random weights)")
    description = {
        "unet": f"SD 2.1-base UNet2DConditionModel ({_params(unet)} parameters)",
        "vae": f"SD 2.1-base AutoencoderKL ({_params(vae)} parameters)",
        "text_encoder": f"CLIPTextModel hidden {text.config.hidden_size}, {text.config.num_hidden_layers} layers ({_params(text)} parameters)",
        "activation": f"{descriptor.architecture.name} ×{descriptor.scale} via spandrel ({_params(descriptor.model)} parameters, {str(act_dtype).removeprefix('torch.')})",
    }
    return CassrComponents(base, descriptor, act_dtype, description)


def _params(module: Any) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.1f} M"


# --- diffusers' x4 upscaler ------------------------------------------------------------------------


@dataclass
class X4Components:
    """diffusers' ``StableDiffusionUpscalePipeline`` with random weights."""

    pipeline: Any
    dtype: torch.dtype
    description: dict[str, str]

    def to(self, device: torch.device | str) -> None:
        for module in (self.pipeline.unet, self.pipeline.vae, self.pipeline.text_encoder):
            module.to(device)


def build_x4(size: str, device: torch.device, dtype: torch.dtype, *, tokenizer: Any, seed: int = 1) -> X4Components:
    """The x4 upscaler pipeline at ``size`` (``real``, ``tiny`` or ``meta``) in ``dtype`` on ``device``."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    build_device = torch.device("meta") if size == "meta" else device
    with quiet_loading(), seeded(build_device, seed), torch.device(build_device):
        if size == "tiny":
            unet = UNet2DConditionModel(
                **{
                    **X4_UNET_CONFIG,
                    "block_out_channels": [16, 16, 32, 32],
                    "layers_per_block": 1,
                    "cross_attention_dim": 32,
                    "attention_head_dim": 2,
                    "norm_num_groups": 8,
                    "sample_size": 32,
                }
            )
            vae = AutoencoderKL(**{**X4_VAE_CONFIG, "block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8})
        else:
            unet = UNet2DConditionModel(**X4_UNET_CONFIG)
            vae = AutoencoderKL(**X4_VAE_CONFIG)
        text = _text_encoder("tiny" if size == "tiny" else "real", build_device)
    unet, vae, text = (_frozen(m.to(build_device, dtype)) for m in (unet, vae, text))
    with quiet_loading():
        pipe = StableDiffusionUpscalePipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tokenizer,
            unet=unet,
            low_res_scheduler=DDPMScheduler(**X4_LOW_RES_SCHEDULER_CONFIG),
            scheduler=DDIMScheduler(**X4_SCHEDULER_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            watermarker=None,
            max_noise_level=X4_MAX_NOISE_LEVEL,
        )
    pipe.set_progress_bar_config(disable=True)
    description = {
        "unet": f"x4-upscaler UNet2DConditionModel ({_params(unet)} parameters)",
        "vae": f"x4-upscaler AutoencoderKL ({_params(vae)} parameters)",
        "text_encoder": f"CLIPTextModel hidden {text.config.hidden_size}, {text.config.num_hidden_layers} layers",
        "scheduler": "DDIMScheduler (v-prediction); low-res DDPMScheduler, noise level 20",
    }
    return X4Components(pipe, dtype, description)


def x4_default_steps() -> int:
    """``num_inference_steps`` default of ``StableDiffusionUpscalePipeline.__call__`` (read, not assumed)."""
    import inspect

    from diffusers import StableDiffusionUpscalePipeline

    return int(inspect.signature(StableDiffusionUpscalePipeline.__call__).parameters["num_inference_steps"].default)


def x4_default_guidance_scale() -> float:
    import inspect

    from diffusers import StableDiffusionUpscalePipeline

    return float(inspect.signature(StableDiffusionUpscalePipeline.__call__).parameters["guidance_scale"].default)
