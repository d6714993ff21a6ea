"""Upscale options are generated from the config fields: every field is an option, parsed to its type."""

from __future__ import annotations

import dataclasses

import pytest
from typer.main import get_command

from cassr_cli.cli.app import app
from cassr_cli.cli.config_options import option_names, parse_config_flags, settings_to_args
from cassr_cli.config import FIELDS, UpscaleConfig
from cassr_cli.errors import UsageError


def _upscale_option_names() -> set[str]:
    command = get_command(app).commands["upscale"]  # type: ignore[attr-defined]
    return {decl for param in command.params for decl in (*param.opts, *param.secondary_opts)}


def test_every_config_field_is_an_upscale_option():
    names = _upscale_option_names()
    for field in FIELDS:
        assert "--" + field.replace("_", "-") in names, field
    assert {"-s", "-r", "-f", "--no-recursive", "--no-overwrite", "--no-fail-fast"} <= names


def test_parse_gives_typed_values_only_for_given_options():
    parsed = parse_config_flags("--steps 5 --strength 0.3 --guidance-mode cached -r --no-overwrite --prompt 'a b'")
    assert parsed == {
        "steps": 5,
        "strength": 0.3,
        "guidance_mode": "cached",
        "recursive": True,
        "overwrite": False,
        "prompt": "a b",
    }
    assert parse_config_flags([]) == {}


@pytest.mark.parametrize("bad", ["--steps five", "--no-such-option 1", "stray", "--steps", "'unclosed"])
def test_parse_errors_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_config_flags(bad, what="--variant")


def test_round_trip_of_every_non_default_value():
    changed = {
        "scale": 2.5, "activation": "x.pth", "adapter": "a.safetensors", "steps": 7, "strength": 0.25,
        "scheduler": "ddim", "guidance_mode": "per-step", "color_fix": "none", "tile_size": 256,
        "recursive": True, "overwrite": True, "format": "png", "suffix": "_x", "device": "cpu",
    }
    parsed = parse_config_flags(settings_to_args(changed))
    assert parsed == changed
    config = UpscaleConfig(**parsed)
    assert all(getattr(config, k) == v for k, v in changed.items())


def test_bool_options_have_a_negative_form():
    bools = [f.name for f in dataclasses.fields(UpscaleConfig) if f.type == "bool"]
    assert bools
    for name in bools:
        assert option_names(name)[0] == f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}"
