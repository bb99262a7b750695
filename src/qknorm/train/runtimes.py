"""`make_runtime`: the runtime of this process — tensor-parallel with tp > 1, distributed under `torchrun` with
more than one process, else the single-process one (where `parallel` has no effect).

It is the one place that knows every implementation (train/runtime.py, train/distributed.py,
train/tensor_parallel_runtime.py), so none imports another's module, and the one place that checks the device
exists on this machine. The tensor-parallel runtime is imported only when tp > 1: it pulls in
torch.distributed.tensor (~1.5 s of imports every other run would pay for nothing).
"""
from __future__ import annotations

import os

from ..errors import ConfigError
from .config import Parallel, check_device_available
from .distributed import DistributedRuntime
from .runtime import Runtime

__all__ = ["make_runtime", "world_size_from_env"]


def world_size_from_env() -> int:
    """torchrun's WORLD_SIZE (1 when unset); ConfigError when it is not an integer."""
    raw = os.environ.get("WORLD_SIZE", "1") or "1"
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} is not an integer (set by torchrun)") from None


def make_runtime(device: str = "cpu", parallel: Parallel = Parallel.DDP, tp: int = 1) -> Runtime:
    """The runtime of this process, on `device` (checked to exist here), with tensor-parallel degree `tp`.
    Whether tp fits the model and the process count is `Runtime.check_model`'s to say (one ConfigError line)."""
    check_device_available(device)
    if tp > 1:
        from .tensor_parallel_runtime import TensorParallelRuntime

        return TensorParallelRuntime(device, parallel, tp)
    if world_size_from_env() <= 1:
        return Runtime(device, parallel)
    return DistributedRuntime(device, parallel)
