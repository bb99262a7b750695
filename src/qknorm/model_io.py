"""Our own model directories: `config.json` ({"qknorm_config": {...}}) + `model.safetensors`.

`save_model` writes both atomically (fileio.atomic_write_bytes), so an interrupted save never leaves a
half-written file under the final name. `load_model` rebuilds the model and checks every key and shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write_bytes, read_json, read_safetensors
from .model import TransformerLM

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "save_model", "load_model", "read_config", "state_dict_for_save",
           "load_state_checked"]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


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


def load_state_checked(model: torch.nn.Module, state: Dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into `model`, failing with the first missing/unexpected key or shape mismatch named."""
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
    model.load_state_dict(state, strict=True)


def load_model(path: Union[str, Path], *, device=None, dtype=None) -> TransformerLM:
    """Load a directory written by `save_model` (or `qknorm train`)."""
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = read_config(d / CONFIG_NAME)
    state = read_safetensors(d / WEIGHTS_NAME)
    model = TransformerLM(config)
    load_state_checked(model, state, source=str(d / WEIGHTS_NAME))
    return model.to(device=device, dtype=dtype)
