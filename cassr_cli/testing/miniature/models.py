"""The miniature's architectures (diffusers/transformers classes in the SD 2.1-base layout, scaled down),
its CLIP tokenizer and the diffusers folder it is exported as.

* VAE: ``AutoencoderKL``, 4 latent channels, three levels (×4 down-sampling), SD's block types.
* UNet: ``UNet2DConditionModel``, three levels: ``CrossAttnDownBlock2D`` ×2 + ``DownBlock2D`` (and the
  mirror going up) plus the cross-attention mid block, so self-attention (``attn1``) runs at the three
  resolutions of the latent /1, /2, /4 and cross-attention (``attn2``) reads the text encoding.
* Text encoder: ``CLIPTextModel`` with the real CLIP vocabulary (49,408 tokens) at width 32.
* Tokenizer: the real CLIP BPE tokenizer, built from open_clip's ``bpe_simple_vocab_16e6.txt.gz``.
* Scheduler: SD 2.1-base's (scaled-linear betas 0.00085–0.012, 1000 steps, epsilon).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import torch

from cassr_cli.testing.miniature.spec import TextSpec, UnetSpec, VaeSpec
from cassr_cli.testing.tiny_weights import SD21_SCHEDULER, SD_MODEL_INDEX

CLIP_VOCAB_SIZE = 49408
CLIP_MERGES = 48894
"""open_clip keeps lines[1 : 49152 - 256 - 2 + 1] of the BPE file: 48,894 merges."""


def build_vae(spec: VaeSpec, *, scaling_factor: float = 1.0) -> Any:
    """A fresh ``AutoencoderKL`` (fp32) of ``spec``'s size; seed the global RNG first for a fixed init."""
    from diffusers import AutoencoderKL

    levels = len(spec.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=spec.block_out_channels,
        layers_per_block=spec.layers_per_block,
        latent_channels=4,
        norm_num_groups=spec.norm_num_groups,
        sample_size=256,
        scaling_factor=scaling_factor,
    )


def build_unet(spec: UnetSpec, cross_attention_dim: int) -> Any:
    """A fresh ``UNet2DConditionModel`` (fp32, epsilon) of ``spec``'s size."""
    from diffusers import UNet2DConditionModel

    levels = len(spec.block_out_channels)
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    return UNet2DConditionModel(
        sample_size=spec.latent_crop,
        in_channels=4,
        out_channels=4,
        block_out_channels=spec.block_out_channels,
        layers_per_block=spec.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=spec.attention_heads,  # diffusers' name; SD configs use it as the head count
        use_linear_projection=True,
        norm_num_groups=spec.norm_num_groups,
    )


def build_text_encoder(spec: TextSpec) -> Any:
    """A ``CLIPTextModel`` over the real CLIP vocabulary (fp32, random init)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_attention_heads=spec.num_attention_heads,
        num_hidden_layers=spec.num_hidden_layers,
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=77,
        projection_dim=spec.hidden_size,
        bos_token_id=CLIP_VOCAB_SIZE - 2,
        eos_token_id=CLIP_VOCAB_SIZE - 1,
        pad_token_id=0,
        hidden_act="gelu",
    )
    return CLIPTextModel(config)


def write_clip_tokenizer(bpe_file: Path, folder: Path) -> Any:
    """Build the real CLIP tokenizer from open_clip's BPE merges file into ``folder`` (``vocab.json``,
    ``merges.txt`` and the transformers configs) and return it. Padding is ``"!"`` as in SD 2.x."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    with gzip.open(bpe_file, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : CLIP_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_file} gives {len(tokens)} tokens, expected {CLIP_VOCAB_SIZE}")
    folder.mkdir(parents=True, exist_ok=True)
    vocab = json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False, separators=(",", ":"))
    (folder / "vocab.json").write_text(vocab, encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token="!")
    tokenizer.save_pretrained(str(folder))
    # SD's own tokenizer folder: vocab.json + merges.txt + configs. tokenizer.json (3.6 MB) would only
    # duplicate them; without it the tokenizer is built from the two files (same ids).
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(vocab, encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(folder))


def empty_prompt_embedding(text_encoder: Any, tokenizer: Any) -> torch.Tensor:
    """``[1, 77, D]`` float32: the encoding of ``""`` exactly as the engine computes it."""
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0].float()


def save_fp16(model: Any, folder: Path) -> None:
    """Save ``model`` as diffusers/transformers do, in fp16 as the ``fp16`` variant (the layout of SD's
    fp16 download, which the engine loads); the model itself is left untouched."""
    import copy

    copy.deepcopy(model).to(torch.float16).save_pretrained(str(folder), variant="fp16", safe_serialization=True)


def save_text_encoder_fp16(encoder: Any, folder: Path) -> None:
    """Save a ``CLIPTextModel`` like :func:`save_fp16`, with every tensor under the ``text_model.`` prefix
    that published SD checkpoints use. Recent transformers releases save the names without the prefix and
    load both forms, but older ones (5.0, the floor) silently re-initialise unprefixed names at random."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    save_fp16(encoder, folder)
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        prefixed = {name if name.startswith("text_model.") else f"text_model.{name}": t for name, t in tensors.items()}
        save_file(prefixed, str(path), metadata=metadata)


def write_scheduler_and_index(base: Path) -> None:
    """``scheduler/scheduler_config.json`` (SD 2.1-base's) and ``model_index.json`` of the base folder."""
    (base / "scheduler").mkdir(parents=True, exist_ok=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER, indent=2) + "\n", encoding="utf-8")
    (base / "model_index.json").write_text(json.dumps(SD_MODEL_INDEX, indent=2) + "\n", encoding="utf-8")


def load_vae(base: Path) -> Any:
    """The exported (fp16) VAE of ``base``, loaded in fp32 as the engine loads it in fp32."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(base), subfolder="vae", variant="fp16", torch_dtype=torch.float32).eval()


def load_unet(base: Path) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", variant="fp16", torch_dtype=torch.float32).eval()


def load_text(base: Path) -> tuple[Any, Any]:
    """The exported text encoder (fp32) and tokenizer of ``base``."""
    from transformers import CLIPTextModel, CLIPTokenizer

    encoder = CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder", variant="fp16", torch_dtype=torch.float32).eval()
    return encoder, CLIPTokenizer.from_pretrained(str(base), subfolder="tokenizer")
