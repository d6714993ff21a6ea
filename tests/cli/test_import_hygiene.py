"""`import cassr_cli` and `cassr --help` stay light: no torch (nor diffusers/transformers/spandrel) is
imported, checked in fresh interpreters; and the real `python -m cassr_cli --help` exits 0 quickly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "diffusers", "transformers", "spandrel")

PROBE = """
import json, runpy, sys
argv = json.loads(sys.argv[1])
code = None
if argv is None:
    import cassr_cli
    assert cassr_cli.UpscaleConfig().scale > 0
    from cassr_cli import Upscaler
    assert Upscaler(steps=0, scale=2).config.scale == 2  # the Python API loads torch on first use only
else:
    sys.argv = ["cassr", *argv]
    try:
        runpy.run_module("cassr_cli", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def probe(argv: list[str] | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSR_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [None, ["--help"], ["upscale", "--help"], ["eval", "--help"], ["config", "show"], ["--version"]],
    ids=["import", "--help", "upscale --help", "eval --help", "config show", "--version"],
)
def test_no_heavy_imports(argv: list[str] | None) -> None:
    result = probe(argv)
    assert result["heavy"] == [], f"{argv} imported {result['heavy']}"
    if argv is not None:
        assert result["code"] in (0, None)


def test_python_m_help_exits_0_quickly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASSR_")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cassr_cli", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "upscale" in proc.stdout and "Exit codes" in proc.stdout
    assert seconds < 10, f"cassr --help took {seconds:.1f} s"
