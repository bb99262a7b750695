"""Tensor parallelism in the trainer: `qknorm train --tp N` (alone, or `--parallel fsdp --tp N` on a 2-D mesh).

    torchrun --nproc_per_node=2 -m qknorm train --preset olmo2 --tp 2                    # 2 TP ranks
    torchrun --nproc_per_node=4 -m qknorm train --preset olmo2 --parallel fsdp --tp 2    # 2 (data) x 2 (tensor)

`TensorParallelRuntime` is the `DistributedRuntime` (train/distributed.py) of a run with tp > 1; the loop sees
only the `Runtime` interface. What differs:

* mesh: `init_device_mesh(device, (world // tp, tp), mesh_dim_names=("dp", "tp"))`. Process r is data-parallel
  rank r // tp and tensor-parallel rank r % tp (row-major, as init_device_mesh lays the ranks out).
* data: `dp_rank` / `dp_size` (runtime.py) are r // tp and world // tp, so the batcher gives every TP rank of a
  group the same rows, the ones the one-process run gives data-parallel rank r // tp.
* `wrap(model)`: the model, initialized identically on every rank (same seed, built on the CPU RNG), is
  sharded by `qknorm.parallel.parallelize_tp(model, mesh["tp"], loss_parallel=True)` (Megatron-style; the
  full-width QK-norm exact with one small all-reduce each way); with world > tp, FSDP2 then shards every
  block and the root over mesh["dp"]. The optimizer is built after this, over the DTensor parameters.
* loss: the logits stay vocab-sharded; `loss_context()` is torch's `loss_parallel()`, under which the
  cross-entropy (and z-loss's logsumexp, step.py) reduce over the vocabulary shards and the backward runs.
* gradient clipping (inherited): `clip_grad_norm_` over DTensor gradients is the global norm (a sharded
  gradient's squares summed over its shards, a replicated one counted once).
* diagnostics: each rank computes attention statistics of its own heads; the model's `TensorParallelPlan`
  combines them over the TP group (parallel/tensor.py), so the metrics equal the one-process run's.
* checkpoints (inherited): sharded DCP checkpoints of the DTensor state; torch.distributed.checkpoint
  reshards on load, so a run resumes at another TP degree, process count or `parallel` (tp is free on resume).

Checked before anything is written (`check_model`, one ConfigError line each): heads, kv heads, d_ff and
vocab_size divisible by tp; tp dividing the number of processes (so tp > 1 needs torchrun); DDP cannot be
combined with TP (data x tensor parallelism is `parallel=fsdp`). Not supported: torch.compile of the TP model
(the QK-norm's collective sits in an autograd.Function), sequence parallelism.
"""
from __future__ import annotations

import contextlib
import logging

from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor.parallel import loss_parallel

from ..config import ModelConfig
from ..errors import ConfigError
from ..parallel import check_tp_degree, parallelize_tp
from .config import Parallel
from .distributed import DistributedRuntime, fsdp_no_sync

__all__ = ["TensorParallelRuntime"]


class _QuietFullGather(logging.Filter):
    """Drops DTensor's note that gathering an FSDP x TP parameter whole takes two all-gathers (it warns "may give
    inconsistent results ... reduction orders", but a gather reduces nothing): it fires on every rank at each
    export of the full model, where the cost is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "sequential all_gather operations" not in record.getMessage()


_REDISTRIBUTE_LOG = "torch.distributed.tensor._redistribute"


class TensorParallelRuntime(DistributedRuntime):
    """One process of a tensor-parallel (or FSDP2 x tensor-parallel) run; see the module docstring."""

    def __init__(self, device: str = "cpu", parallel: Parallel = Parallel.DDP, tp: int = 2):
        super().__init__(device, parallel)
        self.tp = tp
        self._tp_mesh: DeviceMesh | None = None

    def check_model(self, config: ModelConfig) -> None:
        check_tp_degree(config, self.tp)  # the model's shape first: no launch can fix it
        world, tp = self.world_size, self.tp
        if world < tp:
            raise ConfigError(f"tp={tp} needs {tp} processes (one per shard), this run has {world}: launch with "
                              f"torchrun --nproc_per_node={tp} (or a multiple of {tp})")
        check_tp_degree(config, tp, world_size=world)
        if world > tp and self.parallel is not Parallel.FSDP:
            raise ConfigError(f"parallel={self.parallel.value} cannot be combined with tp={tp} over {world} "
                              f"processes; data x tensor parallelism is parallel=fsdp (or use {tp} processes)")

    # ------------------------------------------------------------------ model
    def wrap(self, model: nn.Module) -> nn.Module:
        self.ensure_group()
        mesh = init_device_mesh(self.device.type, (self.dp_size, self.tp), mesh_dim_names=("dp", "tp"))
        assert mesh["dp"].get_local_rank() == self.dp_rank, "device mesh layout is not row-major"
        self._tp_mesh = mesh["tp"]
        parallelize_tp(model, mesh["tp"], loss_parallel=True)
        if self.dp_size > 1:
            from torch.distributed.fsdp import fully_shard

            log = logging.getLogger(_REDISTRIBUTE_LOG)
            if not any(isinstance(f, _QuietFullGather) for f in log.filters):
                log.addFilter(_QuietFullGather())

            for block in model.layers:
                fully_shard(block, mesh=mesh["dp"])
            fully_shard(model, mesh=mesh["dp"])  # the root: embeddings, final norm, head (tied or not)
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def no_sync(self, model: nn.Module):
        return fsdp_no_sync(model) if self.dp_size > 1 else contextlib.nullcontext()

    def loss_context(self):
        return loss_parallel()
