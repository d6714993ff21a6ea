"""Configuration resolution (config.py) as a library: layers and sources, parsing, validation, TOML
round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cassr_cli.config import (
    FIELDS,
    UpscaleConfig,
    describe,
    load_config_file,
    resolve_config,
    to_toml,
    user_config_path,
)
from cassr_cli.errors import ConfigError


def test_every_key_has_help_and_a_valid_default() -> None:
    UpscaleConfig()  # validates
    for name, f in FIELDS.items():
        assert f.metadata["help"], name


def test_layers_and_sources(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('scale = 2\nsteps = 3\nsuffix = "_c"\n', encoding="utf-8")
    resolved = resolve_config(
        {"scale": 1.5, "suffix": None}, env={"CASSR_STEPS": "5", "CASSR_QUALITY": ""}, config_file=conf
    )
    assert resolved.config.scale == 1.5 and resolved.sources["scale"] == "flag"
    assert resolved.config.steps == 5 and resolved.sources["steps"] == "env CASSR_STEPS"
    assert resolved.config.suffix == "_c" and resolved.sources["suffix"] == f"config {conf}"
    assert resolved.config.quality == 95 and resolved.sources["quality"] == "default"
    assert resolved.config_file == conf


def test_config_file_choice(tmp_path: Path) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("scale = 3\n", encoding="utf-8")
    assert resolve_config({}, env={"CASSR_CONFIG": str(env_file)}).config.scale == 3.0
    user = user_config_path()
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text("scale = 2\n", encoding="utf-8")
    assert resolve_config({}, env={}).config.scale == 2.0
    assert resolve_config({}, env={"CASSR_CONFIG": str(env_file)}).config.scale == 3.0
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config({}, env={}, config_file=tmp_path / "nope.toml")


def test_env_parsing() -> None:
    config = resolve_config({}, env={"CASSR_RECURSIVE": "On", "CASSR_SCALE": " 2 ", "CASSR_MAX_PIXELS": "1000"}).config
    assert config.recursive is True and config.scale == 2.0 and config.max_pixels == 1000
    with pytest.raises(ConfigError, match="CASSR_TILE_SIZE"):
        resolve_config({}, env={"CASSR_TILE_SIZE": "big"})


def test_unknown_flag_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_config({"colour": 1}, env={})


@pytest.mark.parametrize(
    "changes",
    [{"scale": 0.5}, {"scale": float("nan")}, {"steps": -1}, {"strength": 0}, {"tile_size": 96}, {"tile_overlap": 12},
     {"activation_tile_size": 24}, {"tile_batch": -1}, {"vae_tile_batch": 65}, {"quality": 101}, {"max_pixels": 0}, {"suffix": "a/b"},
     {"device": "gpu"}, {"format": "gif"}, {"scheduler": "plms"}, {"guidance_scale": 0.5}],
)  # fmt: skip
def test_validation(changes: dict) -> None:
    with pytest.raises(ConfigError, match=f"invalid {next(iter(changes))}"):
        UpscaleConfig(**changes)


def test_overlap_above_half_the_tile_is_allowed() -> None:
    assert UpscaleConfig(tile_size=64, tile_overlap=128).tile_overlap == 128


def test_toml_round_trip(tmp_path: Path) -> None:
    config = UpscaleConfig(scale=2.5, suffix='_"x"', recursive=True, adapter="a.safetensors", prompt="a \\ photo")
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    assert UpscaleConfig(**load_config_file(path)) == config


def test_describe_rows() -> None:
    rows = {k: (v, s) for k, v, s in describe(resolve_config({"recursive": True}, env={}))}
    assert rows["recursive"] == ("true", "flag")
    assert rows["adapter"] == ("(none)", "default")
    assert rows["suffix"] == ("''", "default")
    assert list(rows) == [f.name for f in dataclasses.fields(UpscaleConfig)]
