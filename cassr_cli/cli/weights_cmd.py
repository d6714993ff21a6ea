"""`cassr download-weights` and `cassr weights list|verify` (being built; see the weights issue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the weight commands to ``app``."""
