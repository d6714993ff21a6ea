"""Real-size architectures with random weights, for slow tests and benchmarks (no download needed).

The configs are SD 2.1-base's published ``unet/config.json`` and ``vae/config.json`` and Real-ESRGAN's
``RealESRGAN_x4plus`` hyper-parameters (RRDBNet, 64 features, 23 blocks, ×4).
"""

from __future__ import annotations

from typing import Any

import torch

SD21_BASE_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}

SD21_BASE_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD21_TEXT_HIDDEN = 1024


def sd21_base_unet(*, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """SD 2.1-base's UNet with random weights (``device="meta"`` builds it without memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(SD21_BASE_UNET_CONFIG)
    return unet.to(dtype=dtype) if str(device) != "meta" else unet


def sd21_base_vae(*, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """SD 2.1-base's VAE (scaling factor 0.18215) with random weights."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        vae = AutoencoderKL.from_config(SD21_BASE_VAE_CONFIG)
    return vae.to(dtype=dtype) if str(device) != "meta" else vae


def realesrgan_x4plus_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised RealESRGAN_x4plus-shaped RRDBNet state dict (spandrel detects it)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
        torch.manual_seed(seed)
        return ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4).state_dict()
