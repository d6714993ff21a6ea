"""Real JPEG: 8×8 block statistics at low quality, per-image quality, agreement with Pillow's codec."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cassr_cli.training.degradations import quantize_8bit
from cassr_cli.training.jpeg import jpeg_compress

H, W = 128, 128


def _smooth_image() -> torch.Tensor:
    """``[1, 3, H, W]`` smooth colour gradient (no edges of its own), values in [0.2, 0.8]."""
    yy, xx = torch.meshgrid(
        torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij"
    )
    base = 0.2 + 0.6 * (0.7 * (xx / W) ** 2 + 0.3 * torch.sin(3 * yy / H))
    return torch.stack([base, 0.9 * base + 0.05, 0.8 * base + 0.1]).unsqueeze(0)


def _block_ratio(image: torch.Tensor, dim: int) -> float:
    """Mean |difference| across 8×8 block boundaries (index ≡ 7 mod 8 to the next) / inside blocks."""
    diff = image.diff(dim=dim).abs()
    index = torch.arange(diff.shape[dim])
    boundary = diff.index_select(dim, index[index % 8 == 7]).mean()
    interior = diff.index_select(dim, index[index % 8 != 7]).mean()
    return float(boundary / interior.clamp_min(1e-6))


def test_low_quality_jpeg_shows_8x8_blocks():
    """Measured on this image: ratio 1.00 before, ~270 (columns) after quality 10 (interiors go flat)."""
    image = _smooth_image()
    for dim in (-1, -2):
        assert 0.9 < _block_ratio(quantize_8bit(image), dim) < 1.1
        assert _block_ratio(jpeg_compress(image, [10]), dim) > 3.0


def test_quality_is_per_image():
    images = _smooth_image().expand(2, -1, -1, -1)
    out = jpeg_compress(images, torch.tensor([10, 95]))
    assert _block_ratio(out[:1], -1) > 3.0
    assert _block_ratio(out[1:], -1) < 1.5
    # High quality stays close to the input; low quality does not.
    assert float((out[1] - images[1]).abs().mean()) < 0.01
    assert float((out[0] - images[0]).abs().mean()) > float((out[1] - images[1]).abs().mean())


def test_output_on_8bit_grid_same_dtype_and_shape():
    image = torch.rand(3, 3, 20, 36, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = jpeg_compress(image, [30, 60, 90])
    assert out.shape == image.shape and out.dtype == torch.float64 and out.device == image.device
    assert torch.all((out >= 0) & (out <= 1))
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-9)


def test_matches_pillow_encode_decode():
    """The same 8-bit image through Pillow's libjpeg at the same quality: measured identical here; allow a
    couple of levels for other libjpeg builds (IDCT / chroma upsampling differ slightly between builds)."""
    image = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    ours = jpeg_compress(image, [40])[0]
    pixels = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=40)
    theirs = torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    theirs = theirs.permute(2, 0, 1).float() / 255
    assert float((ours - theirs).abs().max()) <= 3 / 255
    assert float((ours - theirs).abs().mean()) <= 0.5 / 255


@pytest.mark.parametrize("qualities", [[50], [0, 50], [50, 101]])
def test_rejects_bad_qualities(qualities):
    with pytest.raises(ValueError):
        jpeg_compress(torch.zeros(2, 3, 8, 8), qualities)
