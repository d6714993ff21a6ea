"""Configuration through the real commands: precedence flag > CASSR_* env > TOML file (--config, else
$CASSR_CONFIG, else the user config file) > defaults, checked with `cassr config show --json` (values and
sources) and with actual upscales (the output size follows `scale` from whichever layer wins); unknown
keys, wrong types and bad env values are usage errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import cassr, describe, save_rgb, stdout_lines, write_identity_model
from PIL import Image

ANY_ESCAPE = "\x1b"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_identity_model(tmp_path_factory.mktemp("model") / "identity_x4.pth")


def user_config(text: str) -> Path:
    result = cassr(["config", "path"])
    assert result.exit_code == 0, describe(result)
    path = Path(result.stdout.strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def show(*args: str | Path, env: dict[str, str | None] | None = None) -> dict:
    result = cassr(["config", "show", "--json", *args], env=env)
    assert result.exit_code == 0, describe(result)
    return json.loads(result.stdout)


def test_user_config_path_is_under_xdg_config_home(tmp_path: Path) -> None:
    result = cassr(["config", "path"])
    assert result.exit_code == 0
    import os

    assert result.stdout.strip() == str(Path(os.environ["XDG_CONFIG_HOME"]) / "cassr" / "config.toml")


def test_defaults_when_nothing_is_configured() -> None:
    shown = show()
    assert shown["config_file"] is None
    assert shown["values"]["scale"] == 4.0 and shown["values"]["format"] == "same"
    assert set(shown["sources"].values()) == {"default"}


def test_precedence_in_config_show(tmp_path: Path) -> None:
    user = user_config('scale = 2\nsuffix = "_user"\nquality = 50\n')
    assert show()["sources"]["scale"] == f"config {user}"

    env_file = write(tmp_path / "env.toml", 'scale = 3\nformat = "png"\n')
    shown = show(env={"CASSR_CONFIG": str(env_file), "CASSR_QUALITY": "70"})
    assert shown["config_file"] == str(env_file)
    assert shown["values"]["scale"] == 3.0 and shown["sources"]["scale"] == f"config {env_file}"
    assert shown["values"]["format"] == "png"
    assert shown["values"]["quality"] == 70 and shown["sources"]["quality"] == "env CASSR_QUALITY"
    # one file is used: the user file's suffix does not leak in under $CASSR_CONFIG
    assert shown["values"]["suffix"] == "" and shown["sources"]["suffix"] == "default"

    flag_file = write(tmp_path / "flag.toml", "scale = 1.5\n")
    shown = show("--config", flag_file, env={"CASSR_CONFIG": str(env_file)})
    assert shown["config_file"] == str(flag_file)
    assert shown["values"]["scale"] == 1.5 and shown["sources"]["scale"] == f"config {flag_file}"
    assert shown["values"]["format"] == "same"

    shown = show("--config", flag_file, env={"CASSR_SCALE": "2.5"})
    assert shown["values"]["scale"] == 2.5 and shown["sources"]["scale"] == "env CASSR_SCALE"


def test_config_show_table(tmp_path: Path) -> None:
    flag_file = write(tmp_path / "c.toml", 'suffix = "_x4"\n')
    result = cassr(["config", "show", "--config", flag_file], env={"CASSR_TILE_BATCH": "2"})
    assert result.exit_code == 0, describe(result)
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 3:
            rows[cells[0]] = cells[1:]
    assert rows["suffix"] == ["_x4", f"config {flag_file}"]
    assert rows["tile_batch"] == ["2", "env CASSR_TILE_BATCH"]
    assert rows["steps"][1] == "default"
    assert ANY_ESCAPE not in result.stdout


def output_width(dest: Path) -> int:
    (out,) = [p for p in dest.iterdir() if p.is_file()]
    with Image.open(out) as im:
        return im.size[0]


@pytest.mark.parametrize(
    ("layers", "width"),
    [
        ({}, 64),  # default ×4
        ({"user": 2}, 32),
        ({"user": 2, "env_file": 3}, 48),
        ({"user": 2, "env_file": 3, "config": 1.5}, 24),
        ({"user": 2, "env_file": 3, "config": 1.5, "env": 2.5}, 40),
        ({"user": 2, "env_file": 3, "config": 1.5, "env": 2.5, "flag": 1}, 16),
    ],
    ids=["default", "user-file", "CASSR_CONFIG", "--config", "CASSR_SCALE", "--scale"],
)
def test_precedence_changes_the_actual_output(tmp_path: Path, model: Path, layers: dict, width: int) -> None:
    photo = save_rgb(tmp_path / "a.png", h=16, w=16)
    args: list[str | Path] = ["upscale", photo, tmp_path / "out", "--activation", model, "--steps", "0"]
    env: dict[str, str | None] = {}
    if "user" in layers:
        user_config(f"scale = {layers['user']}\n")
    if "env_file" in layers:
        env["CASSR_CONFIG"] = str(write(tmp_path / "env.toml", f"scale = {layers['env_file']}\n"))
    if "config" in layers:
        args += ["--config", write(tmp_path / "flag.toml", f"scale = {layers['config']}\n")]
    if "env" in layers:
        env["CASSR_SCALE"] = str(layers["env"])
    if "flag" in layers:
        args += ["--scale", str(layers["flag"])]
    result = cassr(args, env=env)
    assert result.exit_code == 0, describe(result)
    assert output_width(tmp_path / "out") == width


def test_config_file_booleans_and_their_no_flags(tmp_path: Path, model: Path) -> None:
    save_rgb(tmp_path / "in" / "sub" / "a.png")
    conf = write(tmp_path / "c.toml", 'recursive = true\nsuffix = "_big"\nformat = "jpg"\n')
    base = ["upscale", tmp_path / "in", tmp_path / "out", "--activation", model, "--steps", "0", "--config", conf]
    result = cassr(base)
    assert result.exit_code == 0, describe(result)
    assert stdout_lines(result) == [str(tmp_path / "out" / "sub" / "a_big.jpg")]
    off = cassr([*base, "--no-recursive"])
    assert off.exit_code == 0 and stdout_lines(off) == [] and "not searched" in off.stderr


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["config", "show"], ["upscale", "IN", "OUT", "--steps", "0"]], ids=["show", "upscale"])
def test_unknown_key_suggests_the_right_one(tmp_path: Path, command: list[str]) -> None:
    conf = write(tmp_path / "c.toml", "scael = 2\n")
    save_rgb(tmp_path / "a.png")
    args = [str(tmp_path / "a.png") if a == "IN" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    result = cassr([*args, "--config", conf])
    assert result.exit_code == 2, describe(result)
    assert f"unknown key 'scael' in config file {conf}" in result.stderr
    assert "did you mean 'scale'?" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('scale = "big"\n', "scale in config file {path} must be of type float"),
        ("recursive = 1\n", "recursive in config file {path} must be of type bool"),
        ("steps = 2.5\n", "steps in config file {path} must be of type int"),
        ("scale = 20\n", "invalid scale = 20.0: expected a number from 1 to 8 (from config {path})"),
        ("scale = \n", "config file {path} is not valid TOML"),
    ],
    ids=["str-for-float", "int-for-bool", "float-for-int", "out-of-range", "not-toml"],
)
def test_bad_config_values_are_usage_errors(tmp_path: Path, text: str, message: str) -> None:
    conf = write(tmp_path / "c.toml", text)
    result = cassr(["config", "show", "--config", conf])
    assert result.exit_code == 2, describe(result)
    assert message.format(path=conf) in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CASSR_STEPS": "many"}, "invalid CASSR_STEPS='many': expected int"),
        ({"CASSR_RECURSIVE": "perhaps"}, "invalid CASSR_RECURSIVE='perhaps': expected bool"),
        ({"CASSR_SCALE": "20"}, "invalid scale = 20.0: expected a number from 1 to 8 (from env CASSR_SCALE)"),
        ({"CASSR_FORMAT": "gif"}, "invalid format = 'gif'"),
        ({"CASSR_CONFIG": "/nonexistent/cassr.toml"}, "config file not found: /nonexistent/cassr.toml"),
    ],
    ids=["int", "bool", "range", "choice", "missing-file"],
)
def test_bad_env_values_are_usage_errors(tmp_path: Path, env: dict[str, str], message: str) -> None:
    save_rgb(tmp_path / "a.png")
    for command in (["config", "show"], ["upscale", str(tmp_path / "a.png"), str(tmp_path / "out")]):
        result = cassr(command, env=env)
        assert result.exit_code == 2, describe(result)
        assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_env_booleans(tmp_path: Path) -> None:
    assert show(env={"CASSR_RECURSIVE": "yes", "CASSR_OVERWRITE": "0"})["values"]["recursive"] is True
    assert show(env={"CASSR_OVERWRITE": "off"})["values"]["overwrite"] is False
    assert show(env={"CASSR_SCALE": ""})["sources"]["scale"] == "default"  # empty = not set
