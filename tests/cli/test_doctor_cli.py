"""`cassr doctor`: runs anywhere (exit 0), reports torch/CUDA/attention/weights, and lists what a weights
directory holds."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import cassr, describe


def test_doctor_text_runs() -> None:
    result = cassr(["doctor"])
    assert result.exit_code == 0, describe(result)
    for word in ("cassr", "torch", "CUDA", "attention: SDPA", "weights:"):
        assert word in result.stdout


def test_doctor_json_sections(tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    result = cassr(["doctor", "--json", "--weights-dir", empty])
    assert result.exit_code == 0, describe(result)
    report = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert report["packages"]["torch"] and report["packages"]["cassr"]
    assert set(report["cuda"]) >= {"available", "torch_cuda_version", "devices"}
    assert isinstance(report["cuda"]["available"], bool)
    assert set(report["attention"]) >= {"sdpa", "xformers_installed"}
    assert report["weights"]["directory"] == str(empty)
    models = {m["name"]: m for m in report["weights"]["models"]}
    assert models["realesrgan-x4plus"]["status"] == "missing"
    assert "cassr download-weights" in models["realesrgan-x4plus"]["detail"]


def test_doctor_lists_the_tiny_weights(tiny_weights: Path) -> None:
    plain = json.loads(cassr(["doctor", "--json", "--weights-dir", tiny_weights]).stdout)
    names = {m["name"] for m in plain["weights"]["models"] if m["status"] != "missing"}
    assert {"realesrgan-x4plus", "sd21-base", "multiattn-adapter"} <= names
    # against their own manifest they are complete and verified by size
    result = cassr(["doctor", "--json", "--weights-dir", tiny_weights], env={"CASSR_MANIFEST": str(tiny_weights / "manifest.toml")})
    assert result.exit_code == 0, describe(result)
    statuses = {m["name"]: m["status"] for m in json.loads(result.stdout)["weights"]["models"]}
    assert statuses == {"realesrgan-x4plus": "installed", "sd21-base": "installed", "multiattn-adapter": "installed"}
    text = cassr(["doctor", "--weights-dir", tiny_weights], env={"CASSR_MANIFEST": str(tiny_weights / "manifest.toml")})
    assert text.exit_code == 0 and "realesrgan-x4plus: installed" in text.stdout
