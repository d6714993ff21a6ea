"""Variants: the named sets of upscale options an evaluation compares. Torch-free.

* ``bicubic`` — the MATLAB-bicubic baseline (no model);
* ``stage1`` — the options given outside ``--variant`` with ``--steps 0`` (image activation only);
* ``cassr`` — the options given outside ``--variant``, as they are;
* ``--variant NAME="--steps 5 --guidance-mode cached"`` — the options outside ``--variant`` with these
  on top.

Every variant's configuration is resolved like ``cassr upscale``'s (flags > ``CASSR_*`` environment >
config file > defaults). Outputs are PNGs named after the image, so the output options (``--format``,
``--suffix``, ``--quality``) are not used; options that must be the same for every variant (the scale,
``--overwrite`` …) cannot be set per variant.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cassr_cli.config import UpscaleConfig, resolve_config, settings_to_args
from cassr_cli.errors import UsageError

BUILT_IN = ("bicubic", "stage1", "cassr")
RESERVED = (*BUILT_IN, "lr", "report", "metrics.json", "metrics.csv", "report.html", "sheet.png")
"""Names no ``--variant`` may take (built-ins, the folders ``OUT/lr`` and ``OUT/report``, the report files)."""

OUTPUT_OPTIONS = ("suffix", "format", "quality")
"""Options ``cassr eval`` does not use: outputs are PNG files named after the image."""

SHARED_OPTIONS = ("scale", "recursive", "overwrite", "fail_fast", "max_pixels", "max_host_memory_gb")
"""Options that apply to the whole evaluation and cannot differ between variants."""

NEUTRAL_OPTIONS = frozenset(
    {
        *OUTPUT_OPTIONS,
        *SHARED_OPTIONS,
        "device",
        "tile_batch",
        "weights_dir",
        "attention",
        "activation_tile_batch",
        "vae_tile_batch",
        "canvas",
        "compile",
        "writers",
    }
) - {"scale"}
"""Options that do not change a variant's pixels (beyond float rounding), left out of its recorded
recipe so that, say, re-running on another device reuses the outputs."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FORCED = {"format": "png", "suffix": ""}


@dataclass(frozen=True)
class Variant:
    """One variant of an evaluation.

    Attributes:
        name: also its output folder under OUT.
        config: the resolved upscale configuration of its run.
        bicubic: the MATLAB-bicubic baseline (no model) rather than the cassr pipeline.
        flags: the options given for this variant (``--variant`` text, or ``--steps 0`` for stage1).
    """

    name: str
    config: UpscaleConfig
    bicubic: bool = False
    flags: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """What decides this variant's pixels (``metrics.json`` → ``variants.NAME.options``)."""
        if self.bicubic:
            return {"method": "bicubic (MATLAB imresize)", "scale": self.config.scale}
        values = dataclasses.asdict(self.config)
        return {k: v for k, v in values.items() if k not in NEUTRAL_OPTIONS}

    def args(self) -> str:
        """The variant's own options as command-line text."""
        return " ".join(settings_to_args(self.flags))


def split_variant(text: str) -> tuple[str, str]:
    """``NAME=OPTIONS`` → ``(name, options text)``, the name checked.

    Raises:
        UsageError: no ``=``, or a bad or reserved name.
    """
    name, sep, options = text.partition("=")
    name = name.strip()
    if not sep:
        raise UsageError(f"--variant {text!r} is not NAME=\"OPTIONS\"", hint='e.g. --variant fast="--steps 5"')
    if not _NAME.match(name):
        raise UsageError(
            f"bad variant name {name!r}: use letters, digits, '.', '_' and '-' (it becomes a folder name)"
        )
    if name.lower() in RESERVED:
        raise UsageError(f"variant name {name!r} is reserved", hint=f"reserved: {', '.join(RESERVED)}")
    return name, options


def _check_variant_flags(name: str, flags: Mapping[str, Any]) -> None:
    not_here = sorted(k for k in flags if k in SHARED_OPTIONS or k in OUTPUT_OPTIONS)
    if not_here:
        shown = ", ".join("--" + k.replace("_", "-") for k in not_here)
        raise UsageError(f"variant {name!r} sets {shown}, which apply to the whole evaluation", hint="give them outside --variant")


def build_variants(
    shared: Mapping[str, Any],
    extra: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    only: Sequence[str] | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[UpscaleConfig, list[Variant]]:
    """The shared configuration (the ``cassr`` variant's) and the variants to run, in order: bicubic,
    stage1, cassr, then each ``--variant`` as given.

    Args:
        shared: the upscale options given outside ``--variant`` (``None`` = not given).
        extra: the ``--variant`` values as ``(name, {field: value})`` (see :func:`split_variant`; the
            command line parses the options text).
        only: run just these variants (names), if given.
        config_file, env: as :func:`~cassr_cli.config.resolve_config`.

    Raises:
        UsageError, ConfigError: bad names or options, duplicates, or ``only`` naming unknown variants.
    """
    given = {k: v for k, v in shared.items() if v is not None}
    used = sorted(k for k in OUTPUT_OPTIONS if k in given)
    if used:
        shown = ", ".join("--" + k.replace("_", "-") for k in used)
        raise UsageError(f"cassr eval does not use {shown}: its outputs are PNG files named after the image")

    def resolve(flags: Mapping[str, Any]) -> UpscaleConfig:
        return resolve_config({**given, **flags, **_FORCED}, config_file=config_file, env=env).config

    base = resolve({})
    variants = [
        Variant("bicubic", base, bicubic=True),
        Variant("stage1", base.replace(steps=0), flags={"steps": 0}),
        Variant("cassr", base),
    ]
    seen = {v.name.lower() for v in variants}
    for name, flags in extra:
        _check_variant_flags(name, flags)
        if name.lower() in seen:
            raise UsageError(f"variant {name!r} is given twice")
        seen.add(name.lower())
        variants.append(Variant(name, resolve(flags), flags=dict(flags)))
    if base.scale != int(base.scale):
        raise UsageError(f"cassr eval needs an integer --scale (got {base.scale:g})", hint="e.g. --scale 4")
    if only:
        names = {v.name.lower(): v.name for v in variants}
        unknown = [n for n in only if n.lower() not in names]
        if unknown:
            raise UsageError(
                f"--only names unknown variant(s): {', '.join(unknown)}", hint=f"variants: {', '.join(names.values())}"
            )
        wanted = {n.lower() for n in only}
        variants = [v for v in variants if v.name.lower() in wanted]
    return base, variants
