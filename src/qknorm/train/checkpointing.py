"""The loop's checkpoint entry points: save in the format of the process count, resume from either format.

`save_training_checkpoint`: sharded (sharded.py) with more than one process, the full single-file format
(full.py) otherwise. `load_training_checkpoint` (collective): the newest usable checkpoint of either format,
saved under any world size, loaded into the (wrapped) model and optimizer. A damaged candidate is agreed on by
all ranks and skipped; once a usable one loads, the damaged newer ones are reported with a warning each and
moved aside by rank 0 (`step_XXXXXXX.corrupt`). When none is usable: one CheckpointError, and the run
directory is left exactly as it was. A different model config raises CheckpointMismatch at once, and so does
a checkpoint that asks to run code or leads outside the run (UnsafeCheckpointError): it is refused, not
skipped, so nothing is moved aside and no older state is silently resumed instead.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError, UnsafeCheckpointError
from ..io.checkpoints.full import load_checkpoint, save_checkpoint
from ..io.checkpoints.layout import Checkpoint, CheckpointMismatch, list_checkpoints, move_aside
from ..io.checkpoints.sharded import (broadcast, is_sharded, load_sharded, read_on_every_rank,
                                      save_sharded)
from ..io.files import dir_inside
from .runtime import Runtime

__all__ = ["save_training_checkpoint", "load_training_checkpoint"]


def save_training_checkpoint(rt: Runtime, root: str | Path, step: int, model: nn.Module,
                             optimizer: torch.optim.Optimizer, *, model_config: ModelConfig,
                             train_config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None,
                             rng_state: Optional[Dict[str, Any]] = None, keep_last: int = 3,
                             files: Optional[Dict[str, bytes]] = None) -> Path:
    """The loop's checkpoint: sharded with more than one process, the full single-file format otherwise;
    `files` (e.g. the run's tokenizer.json) are stored in it either way."""
    if rt.world_size > 1:
        return save_sharded(root, step, rt, model, optimizer, model_config=model_config, train_config=train_config,
                            extra=extra, rng_state=rng_state, keep_last=keep_last, files=files)
    model_state = rt.model_state_dict(model)
    optim_state = rt.optimizer_state_dict(model, optimizer)
    path = save_checkpoint(root, step, model_state=model_state, optimizer_state=optim_state,
                           model_config=model_config, train_config=train_config, extra=extra,
                           rng_state=rng_state, keep_last=keep_last, files=files)
    rt.barrier()
    return path


def _try_load(rt: Runtime, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
              model_config: ModelConfig) -> Checkpoint:
    """Verify (every rank agrees) then load one checkpoint of either format; CheckpointError if damaged."""
    if is_sharded(path):
        return load_sharded(path, rt, model, optimizer, model_config)
    # reads and verifies size + sha256 of every file
    full = read_on_every_rank(rt, lambda: load_checkpoint(path, model_config))
    rt.load_model_state_dict(model, full.model_state)
    rt.load_optimizer_state_dict(model, optimizer, full.optimizer_state)
    return full


def load_training_checkpoint(rt: Runtime, root: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             model_config: ModelConfig) -> Checkpoint:
    """Load the newest usable checkpoint under `root` (either format) into `model` / `optimizer`; collective.

    Falls back past damaged checkpoints (a warning each, moved aside as `*.corrupt` by rank 0); a different
    model config raises `CheckpointMismatch`; nothing usable: `CheckpointError`.
    """
    root = Path(root)
    found = broadcast(rt, [(s, str(p)) for s, p in list_checkpoints(root)] if rt.is_main else None)
    if not found:
        raise CheckpointError(f"{root}: no checkpoint to resume from")
    damaged = []  # (path, problem), newest first: reported and moved aside only once a usable one loads
    for _, p in reversed(found):
        path = Path(p)
        dir_inside(root, path)  # a checkpoint symlinked from elsewhere is refused, not skipped
        try:
            ckpt = _try_load(rt, path, model, optimizer, model_config)
        except (CheckpointMismatch, UnsafeCheckpointError):  # not damage: never a reason to fall back
            raise
        except CheckpointError as e:
            damaged.append((path, str(e)))
            continue
        for bad, problem in damaged:
            moved = ""
            if rt.is_main:
                moved = move_aside(bad)
                warnings.warn(f"skipping damaged checkpoint {bad.name}: {problem}{moved}", RuntimeWarning,
                              stacklevel=2)
            rt.barrier()
        return ckpt
    # nothing usable: one error, and the run directory is left exactly as it was (nothing moved aside)
    problems = [problem for _, problem in damaged]
    raise CheckpointError(f"{root}: no usable checkpoint ({len(problems)} damaged; newest: {problems[0]})")
