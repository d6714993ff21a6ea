"""Real JPEG compression for the training degradations: encode and decode with libjpeg, one quality per image.

Real-ESRGAN simulates JPEG with ``DiffJPEG`` (a tensor re-implementation, run non-differentiably, with a
float quality). cassr uses the real codec instead: every image of the batch is rounded to 8 bits,
encoded by OpenCV's libjpeg-turbo at its own integer quality (baseline, 4:2:0 chroma subsampling, the
libjpeg default tables scaled by quality) and decoded again.

Device: the codec runs on the CPU whatever the input device; images are copied to the CPU and the result is
copied back. The bytes are therefore the same for a CPU and a CUDA batch with the same 8-bit content.
torchvision's nvJPEG path (``encode_jpeg`` on CUDA tensors) would avoid the copies, but torchvision 0.29
deprecates its image codecs, and that path has not been checked on a GPU here, so it is not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

JPEG_QUALITY_MIN = 1
JPEG_QUALITY_MAX = 100


def jpeg_compress(x: torch.Tensor, qualities: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """JPEG-encode and decode every image of a batch at its own quality.

    Args:
        x: ``[B, 3, H, W]`` RGB, floating point, values in ``[0, 1]`` (clamped), any device.
        qualities: ``B`` integer JPEG qualities in ``[1, 100]`` (a sequence or a ``[B]`` tensor).

    Returns:
        ``[B, 3, H, W]`` on ``x``'s device and dtype, values on the 8-bit grid ``k / 255``.

    Raises:
        ValueError: wrong shape, or the number or range of qualities does not fit.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"jpeg_compress expects [B, 3, H, W] RGB, got shape {tuple(x.shape)}")
    quality_list = [
        int(q) for q in (qualities.tolist() if isinstance(qualities, torch.Tensor) else qualities)
    ]
    if len(quality_list) != x.shape[0]:
        raise ValueError(f"jpeg_compress got {len(quality_list)} qualities for a batch of {x.shape[0]}")
    if any(not JPEG_QUALITY_MIN <= q <= JPEG_QUALITY_MAX for q in quality_list):
        raise ValueError(
            f"JPEG qualities must be in [{JPEG_QUALITY_MIN}, {JPEG_QUALITY_MAX}], got {quality_list}"
        )

    pixels = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8)
    # [B, H, W, 3] with channels reversed: OpenCV's encoder reads BGR and converts to YCbCr itself.
    frames = pixels.permute(0, 2, 3, 1).flip(-1).cpu().numpy()
    out = np.empty_like(frames)
    for i, (frame, quality) in enumerate(zip(frames, quality_list, strict=True)):
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(frame), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:  # pragma: no cover - libjpeg does not fail on a valid uint8 image
            raise RuntimeError(f"JPEG encoding failed for image {i} of shape {frame.shape}")
        out[i] = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    decoded = torch.from_numpy(out).flip(-1).permute(0, 3, 1, 2)
    return decoded.to(device=x.device, dtype=x.dtype) / 255.0
