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


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, for _keep_xdist_groups
def pytest_collection_modifyitems(config, items):
    _keep_xdist_groups(config, items)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _keep_xdist_groups(config, items):
    """`--dist loadgroup` keeps the tests of one `xdist_group` on one worker by suffixing their node ids with
    "@group" in the worker's collection. pytest 9.2 derives `item.nodeid` from the structured `item._id`, so the
    suffix pytest-xdist 3.8 writes (to `item._nodeid`) is lost and the groups are spread over the workers, silently
    (pytest-dev/pytest-xdist#1386). Here the suffix is put where pytest 9.2 reads it, when it is missing."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)

