"""DEST/README.md of the shipped miniature, rendered from the recipe's report."""

from __future__ import annotations

import json
from typing import Any


def render_readme(report: dict[str, Any], files: list[tuple[str, int, str]]) -> str:
    lines = ["# miniature", "", "```", json.dumps(report, indent=2), "```", ""]
    lines += [f"| `{name}` | {size} | `{digest}` |" for name, size, digest in files]
    return "\n".join(lines) + "\n"
