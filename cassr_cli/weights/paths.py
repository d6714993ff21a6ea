"""Where weights live on disk.

Precedence: ``--weights-dir`` / ``weights_dir`` in the config > ``$CASSR_WEIGHTS_DIR`` > the user cache
directory (``~/.cache/cassr/weights`` on Linux). Never the package directory, never the working
directory. Layout (the same for real downloads and for ``cassr_cli.testing.tiny_weights``)::

    WEIGHTS_DIR/
      sd21-base/               a diffusers folder: model_index.json, unet/, vae/, text_encoder/,
                               tokenizer/, scheduler/
      realesrgan-x4plus/       RealESRGAN_x4plus.pth
      <model>/.cassr-install.json   the install stamp (file sizes and sha256) written after verification
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
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    if env.get(WEIGHTS_DIR_ENV):
        return Path(env[WEIGHTS_DIR_ENV]).expanduser()
    return default_weights_dir()


def model_dir(weights_dir: Path, name: str) -> Path:
    """The folder of model ``name`` inside ``weights_dir``."""
    return weights_dir / name
