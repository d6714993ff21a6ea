"""Training config: TOML sections, typed --set overrides, unknown keys, round trip, CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cassr_cli.errors import ConfigError
from cassr_cli.training.config import TrainConfig, load_train_config, to_toml
from cassr_cli.training.degradations import DegradationConfig


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_real_esrgan_degradations_and_valid():
    config = load_train_config(None)
    assert config == TrainConfig()
    assert config.degradation == DegradationConfig()  # Real-ESRGAN's defaults, scale 4
    assert config.data.scale == config.degradation.scale == 4


def test_file_sections_and_nested_degradation_tables(tmp_path):
    path = _write(
        tmp_path,
        """
output_dir = "runs/x"
[data]
hr_dirs = ["a", "b/c"]
crop_size = 128
scale = 2
[degradation.second]
noise_range = [1, 10]
[degradation.first.kernel]
sinc_prob = 0.25
[optim]
betas = [0.8, 0.99]
[train]
mixed_precision = "bf16"
""",
    )
    config = load_train_config(path)
    assert config.output_dir == "runs/x"
    assert config.data.hr_dirs == ("a", "b/c")
    assert config.degradation.scale == 2  # follows data.scale
    assert config.degradation.second.noise_range == (1.0, 10.0)  # ints accepted for floats
    assert config.degradation.first.kernel.sinc_prob == 0.25
    assert config.degradation.first.noise_range == DegradationConfig().first.noise_range  # untouched default
    assert config.optim.betas == (0.8, 0.99)
    assert config.train.mixed_precision == "bf16"


def test_overrides_are_typed_through_the_schema(tmp_path):
    path = _write(tmp_path, "[optim]\nlearning_rate = 1e-4\n")
    config = load_train_config(
        path,
        [
            "optim.learning_rate=2e-4",
            "train.max_steps=7",
            "train.gradient_checkpointing=true",
            "train.mixed_precision=fp16",  # a Literal field takes bare text
            "output_dir=runs/with spaces",  # a str field takes bare text
            'train.prompt="a = b"',  # ... or a quoted TOML string
            "data.hr_dirs=['x', 'y']",
            "degradation.final.sinc_prob=0",
            "adapter.streams=['ref']",
        ],
    )
    assert config.optim.learning_rate == 2e-4 and isinstance(config.optim.learning_rate, float)
    assert config.train.max_steps == 7
    assert config.train.gradient_checkpointing is True
    assert config.train.mixed_precision == "fp16"
    assert config.output_dir == "runs/with spaces"
    assert config.train.prompt == "a = b"
    assert config.data.hr_dirs == ("x", "y")
    assert config.degradation.final.sinc_prob == 0.0
    assert config.adapter.streams == ("ref",)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lerning_rate=1", "unknown key 'optim.lerning_rate'"),
        ("degradation.scale=2", "unknown key 'degradation.scale'"),
        ("optim.learning_rate=fast", "cannot read 'fast'"),
        ("train.max_steps=1.5", "train.max_steps .* must be int"),
        ("train.mixed_precision=fp32", "must be 'no' | 'fp16' | 'bf16'"),
        ("optim.betas=[0.9]", "must be a list of 2 values"),
        ("data.crop_size=100", "invalid crop_size"),
        ("degradation.first.kernel.kernel_sizes=[4]", "kernel_sizes .*degradation.first.kernel"),
        ("optim.learning_rate.x=1", "is not a table"),
        ("no-equals-sign", "KEY=VALUE"),
        ("__import__('os')=1", "unknown key"),
    ],
)
def test_bad_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, [override])


def test_unknown_key_in_file_names_the_dotted_key_and_suggests(tmp_path):
    path = _write(tmp_path, "[train]\nmax_step = 3\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    assert "unknown key 'train.max_step'" in str(info.value)
    assert info.value.hint == "did you mean 'train.max_steps'?"
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_train_config(_write(tmp_path, "bogus = 1\n"))
    with pytest.raises(ConfigError, match="must be a table"):
        load_train_config(_write(tmp_path, "data = 3\n"))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_train_config(_write(tmp_path, "[data\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_train_config(tmp_path / "missing.toml")


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="validation.images is empty"):
        load_train_config(None, ["validation.every=10"])
    with pytest.raises(ConfigError, match="given together"):
        load_train_config(None, ["data.paired_hr_dir=hr"])
    with pytest.raises(ConfigError, match="timestep_range"):
        load_train_config(None, ["train.timestep_range=[500, 100]"])


def test_saved_toml_round_trips_exactly(tmp_path):
    config = load_train_config(
        None,
        [
            'output_dir="odd \\"name\\" \\\\ é"',
            "data.hr_dirs=['p/q']",
            "data.scale=2",
            "data.crop_size=128",
            "optim.learning_rate=3.3e-5",
            "degradation.first.kernel.rotation_range=[-1.0, 0.5]",
            "degradation.second.resize_modes=['area']",
            "validation.images=['v.png']",
            "validation.every=5",
        ],
    )
    text = to_toml(config, header="saved by a test")
    assert text.startswith("# saved by a test\n")
    path = _write(tmp_path, text)
    assert load_train_config(path) == config
    assert "scale = 2" in text and "[degradation.first.kernel]" in text


def test_cli_reports_config_errors_with_exit_2(tmp_path):
    from cassr_cli.cli.app import app

    runner = CliRunner()
    missing = runner.invoke(app, ["train", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "training config not found" in missing.output
    path = _write(tmp_path, "[train]\nmax_steps = 3\n")
    bad = runner.invoke(app, ["train", str(path), "--set", "train.max_stpes=4"])
    assert bad.exit_code == 2
    assert "unknown key 'train.max_stpes'" in bad.output and "train.max_steps" in bad.output


def test_importing_the_cli_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, cassr_cli.cli.app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_example_config_in_the_docs_loads():
    from conftest import REPO_ROOT

    examples = sorted((REPO_ROOT / "docs" / "examples").glob("*.toml"))
    assert len(examples) >= 3
    kinds = {load_train_config(path).model.kind for path in examples}
    assert kinds == {"multiattn", "scedit"}
