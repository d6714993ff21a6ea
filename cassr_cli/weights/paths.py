"""Where weights live: ``--weights-dir`` / ``weights_dir`` in the config > ``$CASSR_WEIGHTS_DIR`` > the
user cache directory (``~/.cache/cassr/weights`` on Linux); never the package or the working directory.
Each model is a folder ``WEIGHTS_DIR/<name>`` with its install stamp ``.cassr-install.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

WEIGHTS_DIR_ENV = "CASSR_WEIGHTS_DIR"
STAMP_NAME = ".cassr-install.json"


def default_weights_dir() -> Path:
    """The per-user cache location for weights."""
    import platformdirs

    return platformdirs.user_cache_path("cassr") / "weights"


def resolve_weights_dir(explicit: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """``explicit`` if given, else ``$CASSR_WEIGHTS_DIR``, else :func:`default_weights_dir`."""
    value = explicit or (os.environ if env is None else env).get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else default_weights_dir()


def model_dir(weights_dir: Path, name: str) -> Path:
    """The folder of model ``name`` inside ``weights_dir``."""
    return weights_dir / name
