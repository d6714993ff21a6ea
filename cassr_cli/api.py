"""The Python API: an :class:`Upscaler` object to call on images, for scripts, notebooks and services.

It is a thin layer over what ``cassr upscale`` runs: the same :class:`~cassr_cli.config.UpscaleConfig`
(options and validation), the same image reading and output encoding (:mod:`cassr_cli.io.image`) and the
same per-image path of the runner (:func:`cassr_cli.runner.upscale_decoded`, :func:`~cassr_cli.runner.upscale_files`).
Importing it is cheap; torch and the models load on first use, once per :class:`Upscaler`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cassr_cli.config import UpscaleConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from cassr_cli.engine.pipeline import CassrPipeline
    from cassr_cli.io.image import DecodedImage



class Upscaler:
    """Upscale images in-process with the models loaded once.

    Example::

        from cassr_cli import Upscaler

        up = Upscaler(steps=0, activation="realesrgan-x4plus", scale=2, device="cpu")
        big = up("photo.jpg")                       # a PIL image, twice the size
        big = up(pil_image)                         # or a PIL image / numpy array in memory
        results = up.upscale_files(["shots/"], "out/")  # the --json objects of `cassr upscale`

    Args:
        config: a starting :class:`UpscaleConfig` (default: its defaults). Unlike the command, no config
            file and no ``CASSR_*`` variable is read; pass ``resolve_config({}).config`` for that.
        **options: any :class:`UpscaleConfig` field (``scale``, ``steps``, ``activation``,
            ``base_model``, ``device``, ``weights_dir`` …), validated the same way: a bad value raises
            :class:`~cassr_cli.errors.ConfigError` naming the key, an unknown name ``TypeError``.
    """

    def __init__(self, config: UpscaleConfig | None = None, /, **options: Any) -> None:
        self.config = dataclasses.replace(config or UpscaleConfig(), **options)
        self._pipeline: CassrPipeline | None = None

    @property
    def pipeline(self) -> CassrPipeline:
        """The loaded two-stage pipeline (loaded on first access; raises
        :class:`~cassr_cli.errors.EnvironmentNotReadyError` when weights are missing or the device is not)."""
        if self._pipeline is None:
            from cassr_cli.engine.pipeline import CassrPipeline

            self._pipeline = CassrPipeline.from_config(self.config)
        return self._pipeline

    def __call__(
        self,
        image: str | os.PathLike[str] | Image.Image | np.ndarray,
        *,
        output_type: Literal["pil", "np"] = "pil",
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Any:
        """Upscale one image by ``config.scale``.

        Args:
            image: one of

                * a path: read exactly as ``cassr upscale`` reads files (EXIF orientation, ICC profile,
                  alpha, grayscale, 16-bit PNG/TIFF);
                * a PIL image: its current frame, any mode (``RGB``, ``RGBA``, ``L``, ``LA``, ``P``,
                  ``I;16`` …), with its EXIF orientation, ICC profile and EXIF;
                * a numpy array ``[H, W]`` (gray), ``[H, W, 2]`` (gray + alpha), ``[H, W, 3]`` (RGB) or
                  ``[H, W, 4]`` (RGBA): ``uint8`` (0–255), ``uint16`` (0–65535, a 16-bit image) or float
                  (0–1, clipped; treated as 16-bit).
            output_type: ``"pil"`` — the image ``cassr upscale`` would write as PNG, opened by Pillow:
                ``RGB``/``RGBA``, ``L``/``LA`` for gray inputs, ``I;16`` for 16-bit gray. Pillow has no
                16-bit colour mode, so 16-bit colour comes back as 8 bits here; ``"np"`` keeps it: the
                same pixels as an array ``[H', W', C]`` (C as for the input, gray as 1 or 2),
                ``uint16`` for 16-bit inputs, else ``uint8``.
            progress: told ``(stage, done, total)`` as tiles finish.

        The per-image seed derives from ``config.seed`` and the file name (as for a file given to the
        command), or ``"image"`` for an in-memory image.
        """
        from cassr_cli.io.image import encode_image, output_pixels
        from cassr_cli.runner import upscale_decoded

        decoded, key = self._decode(image)
        rgb, alpha, _ = upscale_decoded(decoded, key, self.config, self.pipeline, progress=progress)
        style = {"bit_depth": decoded.bit_depth, "is_gray": decoded.is_gray}
        if output_type == "np":
            pixels = output_pixels(rgb, alpha, fmt="png", **style)
            return pixels[..., 0] if pixels.shape[2] == 1 else pixels
        if output_type != "pil":
            raise ValueError(f"output_type must be 'pil' or 'np', not {output_type!r}")
        from PIL import Image

        data = encode_image(
            rgb, alpha, fmt="png", quality=self.config.quality, icc_profile=decoded.icc_profile, exif=decoded.exif, **style
        )
        result = Image.open(io.BytesIO(data))
        result.load()
        return result

    def upscale_files(self, sources: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """``cassr upscale SOURCES DEST`` with this upscaler's options and its loaded models.

        Returns:
            One dict per image, exactly the objects ``cassr upscale --json`` prints (``input``,
            ``output``, ``status`` ``ok``/``skipped``/``failed``, ``seconds``, ``error``, ``stats``).
        Raises:
            UsageError: bad sources or outputs that would overwrite inputs (nothing was processed).
            EnvironmentNotReadyError: weights missing or corrupt, device unavailable.
        """
        from cassr_cli.runner import upscale_files

        summary = upscale_files([os.fspath(s) for s in sources], Path(dest), self.config, pipeline_factory=lambda _: self.pipeline)
        return [result.to_json() for result in summary.results]

    def _decode(self, image: Any) -> tuple[DecodedImage, str]:
        """The input as the runner's :class:`DecodedImage`, and its seed key."""
        from PIL import Image

        from cassr_cli.io.image import decode_pil, read_image

        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            return read_image(path, max_pixels=self.config.max_pixels), path.name
        if isinstance(image, Image.Image):
            return decode_pil(image, max_pixels=self.config.max_pixels), "image"
        return _decode_array(image, self.config.max_pixels), "image"


def _decode_array(image: Any, max_pixels: int) -> DecodedImage:
    import numpy as np

    from cassr_cli.errors import ImageTooLargeError
    from cassr_cli.io.image import DecodedImage

    arr = np.asarray(image)
    arr = arr[..., None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise ValueError(f"expected an array [H, W], [H, W, 2], [H, W, 3] or [H, W, 4], got shape {np.shape(image)}")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        top, depth = (255.0, 8) if arr.dtype == np.uint8 else (65535.0, 16)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError("the array holds NaN or infinite values")
        top, depth = 1.0, 16
    else:
        raise TypeError(f"expected a uint8, uint16 or float array, got {arr.dtype}")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageTooLargeError(f"the image has {arr.shape[0] * arr.shape[1]} pixels, more than max_pixels={max_pixels}")
    values = np.clip(arr.astype(np.float32) / np.float32(top), 0.0, 1.0)
    gray, has_alpha = arr.shape[2] <= 2, arr.shape[2] in (2, 4)
    color = values[..., : 1 if gray else 3]
    rgb = np.ascontiguousarray(np.repeat(color, 3, axis=2) if gray else color)
    alpha = np.ascontiguousarray(values[..., -1]) if has_alpha else None
    return DecodedImage(rgb, alpha, is_gray=gray, bit_depth=depth, source_format="png", icc_profile=None, exif=None)
