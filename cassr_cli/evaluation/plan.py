"""What an evaluation will do, decided and checked before any work: images, variants, metrics. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cassr_cli.errors import UsageError
from cassr_cli.evaluation.degrade import DEGRADATIONS
from cassr_cli.evaluation.pairing import EvalImage, pair_images, unpaired_images
from cassr_cli.evaluation.report.crops import Crop
from cassr_cli.evaluation.variants import Variant

Mode = Literal["paired", "degrade", "no-reference"]


@dataclass(frozen=True)
class EvalPlan:
    """An evaluation, ready to run.

    Attributes:
        out: the output folder.
        mode: ``paired`` (HR + given LR), ``degrade`` (LR synthesised from HR) or ``no-reference``.
        images: the images (for ``degrade``, ``lr`` is filled in when the LR files are written).
        scale: the integer SR factor (also the PSNR/SSIM border).
        variants: the variants, in order.
        metrics: the metric keys asked for.
        sources: the HR and LR sources as given (for the report).
        degrade: ``bicubic`` or ``realesrgan`` in ``degrade`` mode.
        seed: the base seed (``--seed``), for ``--degrade realesrgan``.
        crop: the report's crop, or None for the most detailed region of each image.
        overwrite: recompute existing outputs.
        fail_fast: stop at the first failure.
        max_pixels: the decompression-bomb guard for every read.
        device: where learned metrics run (``--device``).
        allow_download: let pyiqa download missing metric weights.
        notes: notes from discovery and pairing.
    """

    out: Path
    mode: Mode
    images: list[EvalImage]
    scale: int
    variants: list[Variant]
    metrics: tuple[str, ...]
    sources: dict[str, str | None]
    degrade: str | None = None
    seed: int = 0
    crop: Crop | None = None
    overwrite: bool = False
    fail_fast: bool = False
    max_pixels: int = 200_000_000
    device: str = "auto"
    allow_download: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def with_reference(self) -> bool:
        return self.mode != "no-reference"

    def input_recipe(self) -> dict[str, Any]:
        """What decides the LR inputs (part of every variant folder's recipe)."""
        if self.mode == "degrade":
            recipe: dict[str, Any] = {"degrade": self.degrade, "scale": self.scale}
            if self.degrade == "realesrgan":
                recipe["seed"] = self.seed
            return recipe
        return {"lr": str(Path(self.sources["lr"] or "").expanduser().resolve()), "scale": self.scale}


def plan_images(
    hr: str,
    *,
    lr: str | None,
    degrade: str | None,
    no_reference: bool,
    scale: int,
    recursive: bool,
    out: Path | None = None,
) -> tuple[Mode, list[EvalImage], list[str]]:
    """Find (and pair) the images of an evaluation (never the files under ``out``, earlier outputs).

    Raises:
        UsageError: conflicting or missing options, images that do not pair, mismatched sizes.
        InputNotFoundError: a source that does not exist.
    """
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"OUT must be a folder, but {out} is a file")
    given = [name for name, value in (("--lr", lr), ("--degrade", degrade), ("--no-reference", no_reference)) if value]
    if len(given) != 1:
        raise UsageError(
            "give exactly one of --lr LR, --degrade bicubic|realesrgan, --no-reference"
            + (f" (got {', '.join(given)})" if given else ""),
            hint="e.g. cassr eval HR/ OUT/ --lr LR/",
        )
    if degrade is not None and degrade not in DEGRADATIONS:
        raise UsageError(f"unknown --degrade {degrade!r}", hint=f"choose from: {', '.join(DEGRADATIONS)}")
    if lr is not None:
        pairing = pair_images(hr, lr, scale=scale, recursive=recursive, exclude=out)
        check_pair_sizes(pairing.images, scale)
        mode: Mode = "paired"
    else:
        pairing = unpaired_images(hr, with_reference=not no_reference, recursive=recursive, exclude=out)
        mode = "no-reference" if no_reference else "degrade"
    if not pairing.images:
        raise UsageError(f"no images found in {hr}")
    return mode, pairing.images, pairing.notes


def check_pair_sizes(images: Sequence[EvalImage], scale: int) -> None:
    """Every LR × scale must equal its HR mod-cropped to a multiple of the scale (header reads only).

    Raises:
        UsageError: naming every pair that does not fit.
    """
    from cassr_cli.io.image import probe_image

    bad = []
    for image in images:
        assert image.hr is not None and image.lr is not None
        try:
            hr_h, hr_w = probe_image(image.hr)
            lr_h, lr_w = probe_image(image.lr)
        except Exception:  # unreadable files fail later, per image, with the reader's message
            continue
        want = (hr_h - hr_h % scale, hr_w - hr_w % scale)
        if (lr_h * scale, lr_w * scale) != want:
            bad.append(f"{image.name} (LR {lr_w}x{lr_h} ×{scale} ≠ HR {hr_w}x{hr_h} cropped to {want[1]}x{want[0]})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UsageError(f"{len(bad)} LR image(s) do not match their HR at ×{scale}: {shown}", hint="check --scale")
