"""The process runtime of a training run: the one place where data parallelism hooks into the loop.

`train()` (loop.py) never calls `torch.distributed` itself. It asks its `Runtime` for: the rank and world
size (which rows of the global batch this process takes), `wrap(model)` (DDP / FSDP2), `no_sync(model)`
(skip gradient all-reduce on all but the last micro-batch), `all_reduce_mean(t)` (metrics reported as the
global mean), `is_main` (only rank 0 writes files and prints), and the full (unsharded) state dicts that
checkpoints hold. `Runtime` below is the single-process implementation; a distributed one
(train/distributed.py, under `torchrun`) subclasses it and overrides these methods.

`make_runtime(device, parallel)` picks: with `WORLD_SIZE` > 1 in the environment it builds the distributed
runtime, otherwise the single-process one (where `parallel` has no effect).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["Runtime", "StopRequest", "make_runtime", "PARALLEL_CHOICES"]

PARALLEL_CHOICES = ("ddp", "fsdp")


class Runtime:
    """Single process: rank 0 of 1; every hook is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __init__(self, device: str = "cpu", parallel: str = "ddp"):
        self.device = torch.device(device)
        self.parallel = parallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- model
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls forward/backward on (DDP/FSDP2 wrap it; here the model itself)."""
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain `TransformerLM` behind `wrap(model)`."""
        return getattr(model, "module", model)

    def no_sync(self, model: nn.Module):
        """Context for micro-batches whose gradients must not be reduced yet (DDP's `no_sync`)."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Global gradient norm before clipping (a 0-d tensor); clips to `max_norm` when it is > 0."""
        params = [p for p in model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)

    # --- collectives
    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of `tensor` over all ranks (in place where possible); returns it."""
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        pass

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's value of `flag` on every rank (e.g. a stop request seen by one process)."""
        return flag

    # --- state for checkpoints (full, unsharded, on CPU)
    def model_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.unwrap(model).state_dict().items()}

    def load_model_state_dict(self, model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
        self.unwrap(model).load_state_dict(state, strict=True)

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                                  state: Dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def close(self) -> None:
        pass


class StopRequest:
    """SIGTERM/SIGINT set a flag the loop checks after each step; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signame: Optional[str] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signame is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signame = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_runtime(device: str = "cpu", parallel: str = "ddp") -> Runtime:
    """The runtime of this process: distributed under `torchrun` with more than one process, else single."""
    if parallel not in PARALLEL_CHOICES:
        raise ConfigError(f"parallel={parallel!r} is not allowed; choose one of: {', '.join(PARALLEL_CHOICES)}")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Runtime(device, parallel)
    try:
        from .distributed import make_distributed_runtime
    except ImportError as e:
        raise ConfigError(f"WORLD_SIZE={world}: multi-process training is not available in this build ({e})") \
            from None
    return make_distributed_runtime(device, parallel)
