"""The miniature recipe (``python -m cassr_cli.testing.miniature``) and the files it shipped.

The recipe's parts are tested at toy size (a few steps, two small images); the full recipe is what
``weights/miniature/README.md`` documents. The shipped folder is checked against its README (every file
hashed), the 20 MB budget and the engine's loader.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cassr_cli.testing.miniature.data import random_crops, split_bsd100
from cassr_cli.testing.miniature.spec import FULL, SMOKE, VaeSpec
from cassr_cli.testing.miniature.state import Part

REPO = Path(__file__).resolve().parents[2]
MINIATURE = REPO / "weights" / "miniature"
BUDGET_BYTES = 20_000_000


@pytest.mark.shared
def test_split_is_fixed_80_20_by_image_number():
    from conftest import shared_path

    split = split_bsd100(shared_path("testdata", "bsd100_x4"))
    assert (len(split.train), len(split.validation)) == (80, 20)
    numbers = [int(p.name[4:7]) for p in split.validation]
    assert numbers == list(range(5, 101, 5))
    assert not set(split.train) & set(split.validation)
    assert all(p.name.endswith("_HR.png") for p in split.train + split.validation)


@pytest.mark.shared
def test_tokenizer_is_the_real_clip_tokenizer(tmp_path):
    from conftest import shared_path

    from cassr_cli.testing.miniature.models import write_clip_tokenizer

    tokenizer = write_clip_tokenizer(shared_path("weights", "clip_tokenizer", "bpe_simple_vocab_16e6.txt.gz"), tmp_path)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's ids
    assert len(tokenizer) == 49408
    empty = tokenizer([""], padding="max_length", max_length=77).input_ids[0]
    assert empty[:3] == [49406, 49407, 0] and len(empty) == 77  # SD 2.x pads with "!" (id 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]


def test_crops_depend_only_on_seed_part_and_step():
    images = [torch.arange(3 * 40 * 50, dtype=torch.int32).view(3, 40, 50), torch.zeros(3, 30, 30, dtype=torch.int32)]
    a = random_crops(images, 4, 16, seed=0, part="vae", step=7)
    assert torch.equal(a, random_crops(images, 4, 16, seed=0, part="vae", step=7))
    assert not torch.equal(a, random_crops(images, 4, 16, seed=0, part="vae", step=8))
    assert not torch.equal(a, random_crops(images, 4, 16, seed=1, part="vae", step=7))
    assert a.shape == (4, 3, 16, 16)


TOY = replace(SMOKE, vae=VaeSpec(block_out_channels=(8, 16, 16), norm_num_groups=8, steps=4, batch=2, crop=32, warmup=1, checkpoint_every=2))


def _toy_images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 48, 64), generator=g, dtype=torch.uint8) for _ in range(2)]


def test_an_interrupted_part_resumes_to_the_same_weights_and_a_finished_part_is_kept(tmp_path, monkeypatch):
    """The VAE part run straight through, and run again interrupted after step 3 then resumed, write
    identical weights; a finished part is skipped (done.json)."""
    from cassr_cli.testing.miniature import vae_part

    images = _toy_images()
    straight = tmp_path / "straight"
    vae_part.train_vae(TOY, images, images, Part(straight, "vae"), straight / "base")
    assert Part(straight, "vae").done() is not None and not (straight / "parts" / "vae" / "checkpoint.pt").exists()

    resumed = tmp_path / "resumed"
    real_crops = vae_part.random_crops

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if args[5] == 3:
            raise KeyboardInterrupt
        return real_crops(*args, **kwargs)

    monkeypatch.setattr(vae_part, "random_crops", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vae_part.train_vae(TOY, images, images, Part(resumed, "vae"), resumed / "base")
    assert Part(resumed, "vae").done() is None
    assert torch.load(resumed / "parts" / "vae" / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(vae_part, "random_crops", real_crops)
    vae_part.train_vae(TOY, images, images, Part(resumed, "vae"), resumed / "base")
    name = "vae/diffusion_pytorch_model.fp16.safetensors"
    assert (straight / "base" / name).read_bytes() == (resumed / "base" / name).read_bytes()


def test_full_recipe_fits_the_budget_in_parameters():
    """fp16 weights of the full recipe's models stay well inside 20 MB (the rest is the tokenizer,
    configs, the adapter and room for an SCEdit tuner)."""
    from cassr_cli.testing.miniature.models import build_text_encoder, build_unet, build_vae

    params = sum(
        sum(p.numel() for p in m.parameters())
        for m in (build_vae(FULL.vae), build_unet(FULL.unet, FULL.text.hidden_size), build_text_encoder(FULL.text))
    )
    assert 2 * params < 17_000_000


# --- the shipped files ------------------------------------------------------------------------------


def _readme_hashes() -> dict[str, tuple[int, str]]:
    text = (MINIATURE / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| ([\d,]+) \| `([0-9a-f]{64})` \|$", text, flags=re.MULTILINE)
    return {name: (int(size.replace(",", "")), digest) for name, size, digest in rows}


def test_shipped_files_match_the_readme_and_the_budget():
    listed = _readme_hashes()
    files = sorted(p for p in MINIATURE.rglob("*") if p.is_file() and p.name != "README.md")
    assert {p.relative_to(MINIATURE).as_posix() for p in files} == set(listed), "README file table out of date"
    for path in files:
        size, digest = listed[path.relative_to(MINIATURE).as_posix()]
        assert path.stat().st_size == size and hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    total = sum(p.stat().st_size for p in MINIATURE.rglob("*") if p.is_file())
    assert total <= BUDGET_BYTES, f"weights/miniature holds {total:,} bytes"


def test_shipped_text_encoder_uses_the_prefixed_names_every_transformers_release_loads():
    from safetensors import safe_open

    with safe_open(str(MINIATURE / "base" / "text_encoder" / "model.fp16.safetensors"), "pt") as handle:
        names = list(handle.keys())
    # transformers 5.0 (the floor) re-initialises names without the prefix at random, with only a warning
    assert names and all(name.startswith("text_model.") for name in names), names[:3]


def test_shipped_base_loads_in_the_engine_with_a_x4_vae():
    from cassr_cli.engine.base_model import load_base_model
    from cassr_cli.runtime.device import Runtime

    base = load_base_model(MINIATURE / "base", Runtime(torch.device("cpu"), torch.float32))
    assert (base.vae_factor, base.latent_multiple, base.pixel_align) == (4, 4, 16)
    assert base.prediction_type == "epsilon" and base.unet.dtype == torch.float32
    assert 0.1 < float(base.vae.config.scaling_factor) < 10


def test_text_encoder_is_saved_with_prefixed_names_and_loads_back_equal(tmp_path):
    from safetensors import safe_open
    from transformers import CLIPTextModel

    from cassr_cli.testing.miniature.models import build_text_encoder, save_text_encoder_fp16
    from cassr_cli.testing.miniature.spec import TextSpec

    torch.manual_seed(0)
    encoder = build_text_encoder(TextSpec()).eval()
    save_text_encoder_fp16(encoder, tmp_path)
    with safe_open(str(tmp_path / "model.fp16.safetensors"), "pt") as handle:
        assert all(name.startswith("text_model.") for name in handle.keys())  # noqa: SIM118 (safe_open is not iterable)
    loaded = CLIPTextModel.from_pretrained(str(tmp_path), variant="fp16", torch_dtype=torch.float32).eval()
    ids = torch.arange(77)[None] % 1000
    with torch.no_grad():
        expected = encoder.to(torch.float16).float()(ids).last_hidden_state
        assert torch.allclose(loaded(ids).last_hidden_state, expected, atol=1e-5)
