"""Our own model directories: `config.json` ({"qknorm_config": {...}}) + `model.safetensors` (+ the
`tokenizer.json` a run was trained with).

`save_model` writes both atomically (io/files.py atomic_write_bytes), so an interrupted save never leaves a
half-written file under the final name. `load_model` rebuilds the model and checks every key and shape; it
also takes any training checkpoint directory (io/checkpoints/model_state.py: every checkpoint is a model)
and a run directory whose final model is not written yet (its newest checkpoint, with a warning).
`find_tokenizer` finds the tokenizer file stored beside a model (None for byte-level models). The model is built
on the meta device and its shapes checked against the stored tensors before anything is allocated (a config
declaring 10**9 hidden units is one line, not an out-of-memory kill), and no file is read through a symlink
leading outside the directory given.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..model import TransformerLM
from .files import atomic_write_bytes, dir_inside, file_inside, read_json, read_safetensors
from .names import CKPT_DIR, CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME
from .checkpoints.layout import list_checkpoints
from .checkpoints.model_state import checkpoint_model, is_checkpoint_dir

__all__ = ["save_model", "load_model", "find_tokenizer", "read_config", "state_dict_for_save", "load_state_checked",
           "model_source"]


def state_dict_for_save(model: TransformerLM) -> Dict[str, torch.Tensor]:
    """Contiguous CPU tensors; the tied head is not stored twice (it is the embedding)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_model(model: TransformerLM, out_dir: Union[str, Path]) -> Path:
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_NAME, save(state_dict_for_save(model), metadata={"format": "pt"}))
    atomic_write_bytes(out / CONFIG_NAME, model.config.to_json().encode())
    return out


def read_config(path: Union[str, Path]) -> ModelConfig:
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict) or "qknorm_config" not in raw:
        raise CheckpointError(f"{path}: not a qknorm config (no 'qknorm_config' key); for HF use qknorm.from_hf")
    try:
        return ModelConfig.from_dict(raw["qknorm_config"], source=str(path))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid config: {e}") from None


def load_state_checked(model: torch.nn.Module, state: Dict[str, torch.Tensor], *, source: str,
                       assign: bool = False) -> None:
    """Load `state` into `model`, failing with the first missing/unexpected key or shape mismatch named
    (`assign`: the tensors become the parameters, as for a model built on the meta device)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing); "
                              "was it saved from a different config?")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected); "
                              "was it saved from a different config?")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True, assign=assign)


def model_source(path: Union[str, Path]) -> Path:
    """The directory `load_model(path)` reads: `path` itself (a model or checkpoint directory), or the newest
    checkpoint of a run directory that has no final model yet (with a warning)."""
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory holding {CONFIG_NAME} and {WEIGHTS_NAME} (or a training "
                              "checkpoint)")
    if (d / CONFIG_NAME).is_file() or is_checkpoint_dir(d):
        return d
    found = list_checkpoints(d / CKPT_DIR)
    if not found:
        raise CheckpointError(f"{d / CONFIG_NAME}: file not found (and no checkpoints/: not a qknorm model, run or "
                              "checkpoint)")
    newest = found[-1][1]
    dir_inside(d, newest)  # a checkpoint symlinked from outside the run is not read as its model
    warnings.warn(f"{d} has no final model yet; using its newest checkpoint {newest.name}", UserWarning,
                  stacklevel=3)
    return newest


def load_model(path: Union[str, Path], *, device=None, dtype=None) -> TransformerLM:
    """Load a directory written by `save_model` (or `qknorm train`), or any training checkpoint directory."""
    d = model_source(path)
    if is_checkpoint_dir(d) and not (d / CONFIG_NAME).is_file():
        config, state = checkpoint_model(d)
        source = str(d)
    else:
        config = read_config(file_inside(d, CONFIG_NAME))
        state = read_safetensors(file_inside(d, WEIGHTS_NAME))
        source = str(d / WEIGHTS_NAME)
    with torch.device("meta"):  # the config's sizes are checked against the file's tensors before allocating
        model = TransformerLM(config)
    own = model.state_dict()
    load_state_checked(model, {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}, source=source,
                       assign=True)
    return model.to(device=device, dtype=dtype)


def find_tokenizer(path: Union[str, Path]) -> Optional[Path]:
    """The tokenizer.json stored with a model, checkpoint or run directory, if any."""
    d = Path(path)
    return d / TOKENIZER_NAME if (d / TOKENIZER_NAME).is_file() else None
