"""TF32 is switched on for fp32 runs on CUDA, and only for those."""

from __future__ import annotations

import pytest
import torch

from cassr_cli.runtime.device import Runtime, enable_tf32


@pytest.fixture
def tf32_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [("cuda", torch.float32, True), ("cuda", torch.float16, False), ("cuda", torch.bfloat16, False), ("cpu", torch.float32, False)],
)
def test_tf32_only_for_fp32_on_cuda(tf32_flags, device, dtype, expected):
    assert enable_tf32(Runtime(torch.device(device), dtype)) is expected
    assert torch.backends.cuda.matmul.allow_tf32 is expected
    assert torch.backends.cudnn.allow_tf32 is expected
