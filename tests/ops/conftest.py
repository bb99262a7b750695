"""Kernel tests run on CPU through the Triton interpreter: TRITON_INTERPRET must be set before any
@triton.jit decorates (qknorm imports its kernel module lazily, on first use of the triton backend)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _default_kernel_configs():
    """Tests that force launch configs get the built-in table back afterwards."""
    yield
    import sys

    mod = sys.modules.get("qknorm.ops.triton_qk_norm_rope")
    if mod is not None:
        mod.set_config_override()
