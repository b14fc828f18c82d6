"""Device and precision resolution (vidbooth.device), on any machine: no GPU is used, only named."""

import pytest
import torch

from vidbooth.device import resolve_dtype
from vidbooth.errors import UserError


def test_auto_precision_is_fp16_on_cuda_and_fp32_on_cpu():
    """(mutation testing) fp32 under auto on a GPU, twice the memory, could not fail on a CPU-only CI."""
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("BF16", torch.device("cpu")) is torch.bfloat16 and resolve_dtype("", torch.device("cpu")) is (
        torch.float32)
    with pytest.raises(UserError, match="fp16 is not supported on CPU: use --precision bf16 or fp32"):
        resolve_dtype("fp16", torch.device("cpu"))
