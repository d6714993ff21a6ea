"""The README stays true: its test command is what CI runs, and it documents every upscale option."""

from __future__ import annotations

import re

from conftest import REPO_ROOT

from cassr_cli.config import FIELDS


def _readme() -> str:
    return (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1].strip()
    assert ci.startswith("python3 -m venv")
    assert ci in _readme()


def test_readme_documents_every_upscale_option_with_its_default():
    readme = _readme()
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{flag}")), None)
        assert row is not None, f"{flag} missing from the README options table"
        assert f"CASSR_{name.upper()}" in row
        default = field.default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert re.search(rf"`{re.escape(str(default))}`|`{int(default)}`", row), f"{flag}: default {default} not in README"
        elif isinstance(default, str) and default:
            assert f"`{default}`" in row, f"{flag}: default {default!r} not in README"


def test_readme_lists_every_exit_code():
    readme = _readme()
    for code in (0, 1, 2, 3, 130):
        assert re.search(rf"^\| {code} \|", readme, re.M), code
