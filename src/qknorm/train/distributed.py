"""Data parallelism under `torchrun`: process-group set-up and the `DistributedRuntime` the loop trains through.

    torchrun --nproc_per_node=2 -m qknorm train --preset qwen3 --parallel fsdp ...

`train()` (loop.py) talks to a `Runtime` (runtime.py); `make_runtime` returns the `DistributedRuntime` below
when torchrun's `WORLD_SIZE` is > 1. What it does:

* process group: env:// rendezvous from torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
  backend gloo on CPU, nccl on CUDA (each process on `cuda:LOCAL_RANK`). The group is created **lazily**, on
  the first call that needs it (`wrap`, a collective): the loop validates its settings, the data and the run
  directory first, so bad input fails at once on every rank instead of hanging in a rendezvous. A group we
  created is destroyed by `close()` (also registered with `atexit`); one the caller created is left alone.
* `wrap(model)`: `parallel="ddp"` -> `DistributedDataParallel`; `parallel="fsdp"` -> FSDP2: `fully_shard` on
  every decoder block, then on the root (embeddings, final norm and head), fp32 parameters, one 1-D mesh.
* every rank reads its own contiguous rows of the same global batch (train/data.py `Batcher`), gradients are
  averaged over ranks (DDP all-reduce / FSDP reduce-scatter), so a step equals the single-process step on the
  global batch up to float summation order.
* `all_reduce_mean` (reported loss, validation loss), `all_reduce_max`, and `broadcast_flag`, which is a
  logical OR over ranks: a stop request (SIGTERM, a callback) seen by any one process stops all of them at the
  same step. A non-finite loss or gradient needs no extra collective to be seen by every rank: the loss is
  all-reduced and the gradients are averaged (DDP) or their norm is reduced (FSDP), so NaN reaches all ranks.
* state for checkpoints: `model_state_dict` / `optimizer_state_dict` gather the full state to rank 0 (other
  ranks get `{}`), in the same format as the single-process runtime (optimizer state keyed by parameter
  index), so such a file resumes under any world size. Sharded checkpoints: train/dist_checkpoint.py.
* `QKNORM_DEBUG_DIGEST_DIR=DIR` (a debugging aid, used by the tests): `write_digests` makes every rank write
  `DIR/rank<R>.json` with a sha256 of every full parameter, so replicas can be compared across ranks.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CheckpointError, ConfigError
from .config import Parallel
from .runtime import Runtime

__all__ = ["DistributedRuntime", "env_world", "fsdp_no_sync", "DIGEST_ENV"]

DIGEST_ENV = "QKNORM_DEBUG_DIGEST_DIR"
_TIMEOUT_ENV = "QKNORM_DIST_TIMEOUT_S"  # collective timeout; default 30 min (torch's default)


def env_world() -> tuple:
    """(rank, world_size, local_rank) from torchrun's environment variables; ConfigError if malformed."""
    values = {}
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", os.environ.get("RANK", "0"))):
        raw = os.environ.get(name, default)
        try:
            values[name] = int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent")
    return rank, world, local


class DistributedRuntime(Runtime):
    """One process of a data-parallel run (see the module docstring)."""

    def __init__(self, device: str = "cpu", parallel: Parallel = Parallel.DDP):
        self.rank, self.world_size, self.local_rank = env_world()
        dev = torch.device(device)
        if dev.type == "cuda":  # availability was checked by make_runtime
            if dev.index is None:  # one GPU per process: LOCAL_RANK picks it
                dev = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)  # so the loop's plain "cuda" means this process's GPU
        elif dev.type != "cpu":
            raise ConfigError(f"device={device!r}: multi-process training runs on cpu (gloo) or cuda (nccl)")
        super().__init__(str(dev), parallel)
        self.device = dev
        self.backend = "nccl" if dev.type == "cuda" else "gloo"
        self._owns_group = False
        self._mesh = None

    # ------------------------------------------------------------------ process group
    def ensure_group(self) -> None:
        """Join the process group (env:// rendezvous) unless this process is in one already."""
        if dist.is_initialized():
            if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
                raise ConfigError(f"an existing process group has rank {dist.get_rank()} of "
                                  f"{dist.get_world_size()}, the environment says {self.rank} of {self.world_size}")
            return
        timeout = datetime.timedelta(seconds=float(os.environ.get(_TIMEOUT_ENV, 1800)))
        kwargs: Dict[str, Any] = {"backend": self.backend, "timeout": timeout}
        if self.backend == "nccl":
            kwargs["device_id"] = self.device
        dist.init_process_group(**kwargs)
        self._owns_group = True
        atexit.register(self.close)

    def close(self) -> None:
        """Destroy the process group if this runtime created it (idempotent)."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    # ------------------------------------------------------------------ model
    def wrap(self, model: nn.Module) -> nn.Module:
        self.ensure_group()
        if self.parallel is Parallel.DDP:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(model, device_ids=ids, gradient_as_bucket_view=True)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self._mesh is None:
            self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        blocks = getattr(model, "layers", None)
        for block in blocks if blocks is not None else []:
            fully_shard(block, mesh=self._mesh)
        fully_shard(model, mesh=self._mesh)  # the root: embeddings, final norm, head (tied or not)
        return model

    def no_sync(self, model: nn.Module):
        if self.parallel is Parallel.DDP:
            return model.no_sync()
        return fsdp_no_sync(model)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """The global gradient norm (identical on every rank) before clipping; clips when `max_norm` > 0."""
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a replicated DTensor

    # ------------------------------------------------------------------ collectives
    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.device.type == self.device.type else tensor.to(self.device)

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        self.ensure_group()
        t = self._on_device(tensor)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)  # gloo has no AVG
        t.div_(self.world_size)
        return t if t is tensor else tensor.copy_(t)

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        self.ensure_group()
        t = self._on_device(tensor)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t if t is tensor else tensor.copy_(t)

    def barrier(self) -> None:
        self.ensure_group()
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any rank (a stop request seen by one process stops all)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        return bool(self.all_reduce_max(t).item())

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s picklable `obj` on every rank."""
        self.ensure_group()
        box: List[Any] = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> List[Any]:
        self.ensure_group()
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    # ------------------------------------------------------------------ full state (rank 0), for checkpoints
    def model_state_dict(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """The full model state on rank 0 (CPU); `{}` on the other ranks. Collective: call on every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.contiguous() for k, v in state.items()} if self.is_main else {}

    def load_model_state_dict(self, model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
        """Load a full state (every rank passes the same one) into the wrapped model, sharding it for FSDP."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        self.ensure_group()
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
        """The full optimizer state on rank 0 in `optimizer.state_dict()` format (index-keyed); `{}` elsewhere."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return fqn_to_index_optim_state(state) if self.is_main else {}

    def load_optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                                  state: Dict[str, Any]) -> None:
        """Load a full, index-keyed optimizer state (every rank passes the same one)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        self.ensure_group()
        fqn_state = index_to_fqn_optim_state(state, optimizer, self.unwrap(model))
        set_optimizer_state_dict(model, optimizer, fqn_state, options=StateDictOptions(full_state_dict=True))

    # ------------------------------------------------------------------ debugging
    def write_digests(self, model: nn.Module, directory: Optional[str] = None) -> Optional[Path]:
        """With `QKNORM_DEBUG_DIGEST_DIR` (or `directory`): write this rank's parameter digests. Collective."""
        directory = directory or os.environ.get(DIGEST_ENV)
        if not directory:
            return None
        digests = parameter_digests(model)
        path = Path(directory) / f"rank{self.rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rank": self.rank, "world_size": self.world_size, "parallel": self.parallel,
                                    "digests": digests}, indent=1))
        return path


def parameter_digests(model: nn.Module) -> Dict[str, str]:
    """sha256 of every parameter's full fp32 value by name (FSDP shards are gathered: collective there)."""
    out = {}
    inner = getattr(model, "module", model)
    for name, p in inner.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        data = full.detach().to("cpu", torch.float32).contiguous()
        out[name] = hashlib.sha256(data.numpy().tobytes()).hexdigest()
    return out


@contextlib.contextmanager
def fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# ---------------------------------------------------------------------------------------------- optimizer state


def fqn_to_index_optim_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """An FQN-keyed optimizer state (torch.distributed.checkpoint.state_dict) -> `optimizer.state_dict()` form.

    Parameters are numbered in param-group order, as `torch.optim.Optimizer.state_dict` numbers them.
    """
    index: Dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for fqn in group["params"]:
            index.setdefault(fqn, len(index))
            ids.append(index[fqn])
        groups.append({**group, "params": ids})
    return {"state": {index[fqn]: s for fqn, s in state["state"].items()}, "param_groups": groups}


def index_to_fqn_optim_state(state: Dict[str, Any], optimizer: torch.optim.Optimizer,
                             model: nn.Module) -> Dict[str, Any]:
    """The inverse of `fqn_to_index_optim_state` for `optimizer` over `model`'s (unwrapped) parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    fqns = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    saved_groups = state.get("param_groups", [])
    if len(saved_groups) != len(optimizer.param_groups) or \
            [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise CheckpointError("optimizer state does not match this model's parameter groups "
                              f"({[len(g['params']) for g in saved_groups]} saved vs "
                              f"{[len(g['params']) for g in optimizer.param_groups]})")
    by_index = {i: fqns[pos] for pos, i in enumerate(i for g in saved_groups for i in g["params"])}
    return {"state": {by_index[int(i)]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [by_index[i] for i in g["params"]]} for g in saved_groups]}
