"""The model inside a training checkpoint, without the trainer: every checkpoint is a model.

`checkpoint_model(path)` reads a checkpoint directory of either format (full.py or sharded.py, verified by
size and sha256 first) and returns its ModelConfig and full model state dict on CPU; a sharded one is
consolidated in this process with torch.distributed.checkpoint (no process group). `qknorm.load_model`,
`qknorm inspect` and `qknorm convert --to-hf` accept such a directory, so a user can follow logit growth
across a run's checkpoints.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Tuple

import torch

from ...config import ModelConfig
from ...errors import CheckpointError, ConfigError
from ...fileio import read_json
from ...model import TransformerLM
from ..runtime import Runtime
from .full import load_checkpoint
from .layout import META
from .sharded import STATE_DIR, is_sharded, read_sharded_meta, verify_sharded

__all__ = ["is_checkpoint_dir", "checkpoint_model"]


def is_checkpoint_dir(path: Path) -> bool:
    """A training checkpoint directory (it holds meta.json with a model config)."""
    return (Path(path) / META).is_file()


def _config(path: Path) -> ModelConfig:
    meta = read_json(path / META)
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{path / META}: not a qknorm training checkpoint (no model_config)")
    try:
        return ModelConfig.from_dict(meta["model_config"], source=str(path / META))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path / META}: invalid model config: {e}") from None


def checkpoint_model(path: str | Path) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """(model config, full CPU state dict) of training checkpoint directory `path`."""
    path = Path(path)
    config = _config(path)
    if not is_sharded(path):
        return config, load_checkpoint(path, config).model_state
    meta = read_sharded_meta(path, config)
    problem = verify_sharded(Runtime(), path, meta)
    if problem:
        raise CheckpointError(problem)
    import torch.distributed.checkpoint as dcp

    with torch.device("meta"):
        skeleton = TransformerLM(config)
    state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in skeleton.state_dict().items()}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
            dcp.load({"model": state}, storage_reader=dcp.FileSystemReader(str(path / STATE_DIR)), no_dist=True)
    except Exception as e:  # a layout that does not fit, or a file that does not parse
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(f"{path}: cannot consolidate sharded checkpoint ({e.__class__.__name__}: {first})") \
            from None
    return config, state
