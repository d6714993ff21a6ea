"""The frozen text-to-image base model (SD 1.x/2.x in diffusers layout): loading and text encoding.

The folder is a diffusers pipeline directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/). Weight files may be the fp16 variant (``*.fp16.safetensors``, the default download) or the
full-precision ones; both load into the requested compute dtype. Only safetensors are read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cassr_cli.errors import ModelLoadError
from cassr_cli.runtime.device import Runtime

logger = logging.getLogger(__name__)

REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class BaseModel:
    """The parts of a latent text-to-image model that stage 2 uses; all frozen, in eval mode.

    Attributes:
        unet: ``UNet2DConditionModel`` in the compute dtype on the device.
        vae: ``AutoencoderKL`` in the compute dtype on the device.
        text_encoder, tokenizer: CLIP text model and its tokenizer.
        scheduler_config: the scheduler config of the folder (timesteps, betas, prediction type).
        name: where it came from (for messages and adapter metadata).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    name: str

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def vae_factor(self) -> int:
        """Pixels per latent pixel (8 for SD 1.x/2.x)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_multiple(self) -> int:
        """Latent sizes the UNet accepts are multiples of this: ``2 ** down-samplings`` (8 for SD 1.x/2.x)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def pixel_align(self) -> int:
        """Pixel sizes stage 2 pads to: one latent multiple in pixels (64 for SD 1.x/2.x)."""
        return self.vae_factor * self.latent_multiple


def _variant(folder: Path, part: str) -> str | None:
    """``"fp16"`` when the folder holds only fp16 variant weights for ``part``."""
    files = [p.name for p in (folder / part).glob("*.safetensors")]
    if any(".fp16." in f for f in files) and not any(".fp16." not in f for f in files):
        return "fp16"
    return None


def load_base_model(folder: Path, runtime: Runtime, *, name: str | None = None) -> BaseModel:
    """Load the base model in ``folder`` onto ``runtime`` (frozen, eval mode, safetensors only).

    Raises:
        ModelLoadError: a part is missing or cannot be loaded.
    """
    missing = [p for p in REQUIRED_PARTS if not (folder / p).is_dir()]
    if missing:
        raise ModelLoadError(
            f"base model {folder} is not a complete diffusers folder: missing {', '.join(missing)}",
            hint="point --base-model at an SD 1.x/2.x diffusers directory, or run: cassr download-weights",
        )
    dtype = runtime.dtype
    with quiet_loading():
        return _load_parts(folder, runtime, dtype, name)


def _load_parts(folder: Path, runtime: Runtime, dtype: torch.dtype, name: str | None) -> BaseModel:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        unet = UNet2DConditionModel.from_pretrained(
            str(folder), subfolder="unet", variant=_variant(folder, "unet"), torch_dtype=dtype, use_safetensors=True
        )
        vae = AutoencoderKL.from_pretrained(
            str(folder), subfolder="vae", variant=_variant(folder, "vae"), torch_dtype=dtype, use_safetensors=True
        )
        text_encoder = CLIPTextModel.from_pretrained(
            str(folder), subfolder="text_encoder", variant=_variant(folder, "text_encoder"), torch_dtype=dtype,
            use_safetensors=True,
        )
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
        scheduler_config = dict(DDIMScheduler.load_config(str(folder), subfolder="scheduler"))
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load base model from {folder}: {err}") from err
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(runtime.device)
    return BaseModel(unet, vae, text_encoder, tokenizer, scheduler_config, name or folder.name)


def load_unet(folder: Path, runtime: Runtime) -> Any:
    """Another copy of the base model's UNet (``folder``'s ``unet/``), frozen, on ``runtime`` — one per
    extra device when an image's tiles are spread over several devices.

    Raises:
        ModelLoadError: the UNet cannot be loaded.
    """
    from diffusers import UNet2DConditionModel

    try:
        with quiet_loading():
            unet = UNet2DConditionModel.from_pretrained(
                str(folder), subfolder="unet", variant=_variant(folder, "unet"), torch_dtype=runtime.dtype,
                use_safetensors=True,
            )
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load the UNet of {folder}: {err}") from err
    unet.requires_grad_(False)
    unet.eval()
    return unet.to(runtime.device)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the loaders' own progress bars and chatter (cassr reports progress itself), restoring the
    libraries' previous settings afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = (
        diffusers_logging.get_verbosity(),
        transformers_logging.get_verbosity(),
        transformers_logging.is_progress_bar_enabled(),
        diffusers_logging.is_progress_bar_enabled(),
    )
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(saved[0])
        transformers_logging.set_verbosity(saved[1])
        if saved[3]:
            diffusers_logging.enable_progress_bar()
        if saved[2]:
            transformers_logging.enable_progress_bar()


@torch.inference_mode()
def encode_prompt(base: BaseModel, prompt: str, device: torch.device) -> torch.Tensor:
    """CLIP embeddings ``[1, 77, hidden]`` (compute dtype on ``device``) for ``prompt``."""
    tokens = base.tokenizer(
        [prompt],
        padding="max_length",
        max_length=base.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = tokens.input_ids.to(device)
    return base.text_encoder(ids)[0]
