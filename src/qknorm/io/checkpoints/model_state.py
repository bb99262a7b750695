"""The model inside a training checkpoint, without the trainer: every checkpoint is a model.

`checkpoint_model(path)` reads a checkpoint directory of either format (full.py or sharded.py, verified by
size and sha256 first) and returns its ModelConfig and full model state dict on CPU; a sharded one is
consolidated in this process with torch.distributed.checkpoint (no process group), read by dcp_reader.py (no
unpickling but the allow-list one; the config's tensor shapes are checked against `.metadata`, and its sizes
against the shard files, before anything is allocated). `qknorm.load_model`,
`qknorm inspect` and `qknorm convert --to-hf` accept such a directory, so a user can follow logit growth
across a run's checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ...config import ModelConfig
from ..dcp_reader import METADATA, load_dcp, read_checked_metadata
from ...errors import CheckpointError, ConfigError
from ..files import read_json
from ...model import TransformerLM
from .collective import SINGLE_PROCESS
from .full import load_checkpoint
from .layout import META
from .sharded import STATE_DIR, is_sharded, read_rng, read_sharded_meta, verify_sharded

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
    problem = verify_sharded(SINGLE_PROCESS, path, meta)
    if problem:
        raise CheckpointError(problem)
    read_rng(path)  # never needed for the model, but a checkpoint holding a file that asks to run code is refused
    metadata = read_checked_metadata(path / STATE_DIR, root=path)
    with torch.device("meta"):
        skeleton = TransformerLM(config)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in skeleton.state_dict().items()}
    _check_entries(path / STATE_DIR / METADATA, metadata, expected)  # before allocating what meta.json declares
    state = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in expected.items()}
    load_dcp({"model": state}, path / STATE_DIR, metadata)
    return config, state


def _check_entries(source: Path, metadata, expected: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]) -> None:
    """Every model tensor the config implies is in the checkpoint with that shape (the checkpoint's sizes were
    checked against its shard files' bytes), so a config declaring more than the files hold allocates nothing."""
    entries = metadata.state_dict_metadata
    for key, (shape, _) in expected.items():
        entry = entries.get(f"model.{key}")
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{source}: has no tensor 'model.{key}', which its model config implies")
        if tuple(entry.size) != shape:
            raise CheckpointError(f"{source}: 'model.{key}' has shape {tuple(entry.size)}, its model config implies "
                                  f"{shape}")
