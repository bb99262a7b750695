"""Kernel tests run on CPU through the Triton interpreter (TRITON_INTERPRET is set once, in tests/conftest.py)."""
import pytest


@pytest.fixture(autouse=True)
def _default_kernel_configs():
    """Tests that force launch configs get the built-in table back afterwards."""
    yield
    import sys

    mod = sys.modules.get("qknorm.ops.triton_qk_norm_rope")
    if mod is not None:
        mod.set_config_override()
