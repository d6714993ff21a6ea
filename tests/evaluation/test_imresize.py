"""MATLAB-compatible bicubic: reproduces the MATLAB-made LR files of Set5, Set14 and BSD100 exactly, and
agrees with pyiqa's independent port away from the borders (where MATLAB replicates edge pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from cassr_cli.evaluation.imresize import contributions, cubic, imresize


@pytest.mark.shared
@pytest.mark.parametrize("dataset", ["set5_x4", "set14_x4", "bsd100_x4"])
def test_reproduces_matlab_lr_files_exactly(dataset: str) -> None:
    folder = shared_path("testdata", dataset)
    total = different = 0
    for hr_path in sorted(folder.glob("*_HR.png")):
        hr = np.asarray(Image.open(hr_path))
        lr = np.asarray(Image.open(hr_path.with_name(hr_path.name.replace("_HR", "_LR"))))
        ours = imresize(hr, lr.shape[0], lr.shape[1], quantize=True)
        assert ours.shape == lr.shape
        total += lr.size
        different += int(np.count_nonzero(ours.astype(np.int64) != lr))
    assert total > 0
    # measured: no value differs (Set5 0.11 M, Set14 0.57 M, BSD100 2.88 M values)
    assert different == 0, f"{different} of {total} values differ from the MATLAB LR files"


def test_kernel_and_weights() -> None:
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(cubic(x), [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0])
    for n_in, n_out in ((10, 40), (40, 10), (7, 3), (3, 7), (5, 5)):
        weights, indices = contributions(n_in, n_out)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
        assert indices.min() >= 0 and indices.max() < n_in
    # shrinking ×1/4 stretches the kernel over 16 input pixels (antialiasing), growing does not
    assert contributions(40, 10)[0].shape[1] > contributions(40, 10, antialiasing=False)[0].shape[1]


def test_constant_and_linear_images() -> None:
    flat = np.full((13, 17, 3), 77.0)
    np.testing.assert_allclose(imresize(flat, 5, 40), 77.0)
    ramp = np.tile(np.arange(32, dtype=np.float64), (8, 1))  # cubic interpolation keeps a linear ramp inside
    up = imresize(ramp, 8, 64)
    centres = (np.arange(64) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[:, 4:-4], np.tile(centres, (8, 1))[:, 4:-4], atol=1e-9)
    assert imresize(ramp, 4, 8).shape == (4, 8)


def test_quantize_rounds_each_pass_like_uint8_matlab() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 24, 3)).astype(np.float64)
    q = imresize(image, 7, 9, quantize=True)
    assert np.array_equal(q, np.round(q)) and q.min() >= 0 and q.max() <= 255
    assert np.abs(q - imresize(image, 7, 9)).max() <= 1.0 + 1e-9


def test_agrees_with_pyiqa_port_away_from_borders() -> None:
    torch = pytest.importorskip("torch")
    pyiqa_resize = pytest.importorskip("pyiqa.matlab_utils").imresize
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (60, 72, 3))
    tensor = torch.from_numpy(image.transpose(2, 0, 1)[None].copy())
    for size in ((15, 18), (180, 144), (41, 29)):
        theirs = pyiqa_resize(tensor, sizes=size)[0].numpy().transpose(1, 2, 0)
        ours = imresize(image, *size)
        margin = 12  # pyiqa mirrors at the borders; MATLAB (and cassr) repeat the edge pixel
        np.testing.assert_allclose(ours[margin:-margin, margin:-margin], theirs[margin:-margin, margin:-margin], atol=1e-2)
