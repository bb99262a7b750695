"""Test-suite wide set-up.

Without a CUDA GPU, Triton kernels run through the Triton interpreter on CPU tensors (this is how CI checks
kernel correctness). TRITON_INTERPRET must be set before any @triton.jit function is decorated, i.e. before
any test module (or transformers, which may import triton) is imported: hence here, in the root conftest.
Tests that need a real GPU are marked `@pytest.mark.gpu` and skipped with the reason "needs a CUDA GPU".
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
