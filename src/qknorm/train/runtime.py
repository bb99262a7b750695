"""The process runtime of a training run: the one place where data parallelism hooks into the loop.

`train()` (loop.py) never calls `torch.distributed` itself. It asks its `Runtime` for: the data-parallel rank
and size (`dp_rank`, `dp_size`: which rows of the global batch this process takes; the process rank and count
unless tensor parallelism makes groups of processes share rows), `wrap(model)` (DDP / FSDP2 / TP), `no_sync(model)`
(skip gradient all-reduce on all but the last micro-batch), `all_reduce_mean(t)` (metrics reported as the
global mean), `is_main` (only rank 0 writes files and prints), `loss_context()` (the context the loss and its
backward run in), `check_model(config)` (the model fits this runtime, before anything is written), and the
full (unsharded) state dicts that checkpoints hold. `Runtime` below is the single-process implementation;
the distributed ones (train/distributed.py, train/tensor_parallel_runtime.py, under `torchrun`) subclass it.

`make_runtime` (train/runtimes.py) picks the implementation for the process it runs in.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict

import torch
from torch import nn

from ..config import ModelConfig
from .config import Parallel

__all__ = ["Runtime"]


class Runtime:
    """Single process: rank 0 of 1; every hook is the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tp: int = 1  # tensor-parallel degree: processes that share each data-parallel rank's rows

    @property
    def dp_rank(self) -> int:
        """This process's data-parallel rank: which rows of the global batch it takes."""
        return self.rank // self.tp

    @property
    def dp_size(self) -> int:
        """Number of data-parallel groups the global batch is split over."""
        return self.world_size // self.tp

    def __init__(self, device: str = "cpu", parallel: Parallel = Parallel.DDP):
        self.device = torch.device(device)
        self.parallel = Parallel.parse("parallel", parallel)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_model(self, config: ModelConfig) -> None:
        """ConfigError (one line) unless `config` can be trained by this runtime; called before anything is written."""

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

    def loss_context(self):
        """Context the loss and its backward run in (tensor parallelism: torch's `loss_parallel()`)."""
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
