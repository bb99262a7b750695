"""Exact Hugging Face interop: `from_hf` (an HF model object or checkpoint directory -> TransformerLM) and
`to_hf` (TransformerLM -> a directory transformers' `AutoModelForCausalLM.from_pretrained` loads).

    model = qknorm.from_hf("path/to/Qwen3-0.6B")            # config.json + *.safetensors, no transformers needed
    model = qknorm.from_hf(hf_model)                         # Llama/Mistral/Qwen2/Qwen3/Olmo2/Gemma3 *ForCausalLM
    qknorm.to_hf(model, "out/")                              # config.json + model.safetensors

Reading a directory uses json and safetensors only (never transformers, never pickles): `config.json` and
either `model.safetensors` or the shards named by `model.safetensors.index.json`. The config translation is in
hf_config.py, the key maps and the Gemma offset check in hf_keys.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..io.files import atomic_write_bytes, read_json, read_safetensors
from ..io.model_dir import state_dict_for_save
from ..io.names import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..model import TransformerLM
from .hf_config import config_from_hf, hf_config_from_ours, infer_family
from .hf_keys import check_gemma_offsets, hf_state_to_ours, ours_state_to_hf

__all__ = ["from_hf", "to_hf", "read_hf_dir", "resolve_dtype"]

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "float": torch.float32}


def resolve_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """None, a torch floating dtype, or one of fp32/bf16/fp16 (and their long names)."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype={dtype} is not a floating-point dtype")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not allowed; choose one of: fp32, bf16, fp16")
    return _DTYPES[key]


# ---------------------------------------------------------------------------------------------- reading
def read_hf_dir(path: Union[str, Path]) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(config dict, HF state dict) of a checkpoint directory, with json + safetensors only."""
    d = Path(path)
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory (expected one holding {CONFIG_NAME} and *.safetensors)")
    cfg = read_json(d / CONFIG_NAME)
    if (d / INDEX_NAME).is_file():
        index = read_json(d / INDEX_NAME)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{d / INDEX_NAME}: has no 'weight_map' object")
        state: Dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:
                raise CheckpointError(f"{d / INDEX_NAME}: shard name {shard!r} must be a file in the directory")
            tensors = read_safetensors(d / shard)
            for key, t in tensors.items():
                if key in state:
                    raise CheckpointError(f"{d / shard}: key {key!r} is also in another shard")
                state[key] = t
        missing = sorted(k for k in weight_map if k not in state)
        if missing:
            raise CheckpointError(f"{d / weight_map[missing[0]]}: missing key {missing[0]!r} that {INDEX_NAME} "
                                  f"places there ({len(missing)} missing)")
        return cfg, state
    if (d / WEIGHTS_NAME).is_file():
        return cfg, read_safetensors(d / WEIGHTS_NAME)
    files = sorted(d.glob("*.safetensors"))
    if len(files) == 1:
        return cfg, read_safetensors(files[0])
    if files:
        raise CheckpointError(f"{d}: {len(files)} .safetensors files but no {INDEX_NAME} saying which holds what")
    hint = " (only PyTorch .bin/.pt weights, which are not read: re-save with safetensors)" if (
        any(d.glob("*.bin")) or any(d.glob("*.pt"))) else ""
    raise CheckpointError(f"{d}: no {WEIGHTS_NAME} or {INDEX_NAME}{hint}")


def _from_object(model: Any) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], str]:
    cfg = model.config.to_dict()
    # clone: our parameters must not alias the HF model's
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return cfg, state, type(model).__name__


def from_hf(model_or_dir: Any, *, dtype: Union[None, str, torch.dtype] = None,
            allow_folded: bool = False, max_seq_len: Optional[int] = None) -> TransformerLM:
    """A TransformerLM computing the same function as an HF Llama/Mistral/Qwen2/Qwen3/Olmo2/Gemma3 causal LM.

    model_or_dir: an HF model object (`*ForCausalLM`, or `Gemma3ForConditionalGeneration`, whose text part is
    taken), or a directory with config.json and *.safetensors (read without importing transformers).
    dtype: None keeps the checkpoint's dtype (that of the embedding); else fp32/bf16/fp16 or a torch dtype.
    allow_folded: skip the check that Gemma norm weights were not already folded to 1 + w (hf_keys.py).
    max_seq_len: the model's max_seq_len instead of config.json's max_position_embeddings; when that is missing
    or unknown (-1, null: OLMo-core's export writes -1) the family's transformers default is used
    (hf_config._max_seq_len), with a warning when the field was stated.
    Raises CheckpointError naming the file/key and what is wrong (unsupported model_type or RoPE type, a
    missing or extra key, a shape that does not match the config).
    """
    if isinstance(model_or_dir, (str, Path)):
        source = str(model_or_dir)
        cfg, state = read_hf_dir(model_or_dir)
    elif hasattr(model_or_dir, "config") and hasattr(model_or_dir, "state_dict"):
        cfg, state, source = _from_object(model_or_dir)
    else:
        raise TypeError(f"from_hf expects an HF model or a directory path, got {type(model_or_dir).__name__}")
    config, fam = config_from_hf(cfg, source=source, max_seq_len=max_seq_len)
    return build_from_hf_state(config, fam.model_type, state, dtype=resolve_dtype(dtype), source=source,
                               allow_folded=allow_folded)


def build_from_hf_state(config: ModelConfig, model_type: str, hf_state: Dict[str, torch.Tensor], *,
                        dtype: Optional[torch.dtype], source: str, allow_folded: bool = False) -> TransformerLM:
    """Check and map `hf_state` onto a TransformerLM(config) built without allocating random weights."""
    with torch.device("meta"):
        skeleton = TransformerLM(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    state = hf_state_to_ours(hf_state, model_type, expected, tied=config.tie_embeddings, source=source)
    if config.norm_offset:
        check_gemma_offsets(state, source=source, allow_folded=allow_folded)
    dtype = dtype or state["embed.weight"].dtype
    if not dtype.is_floating_point:
        raise CheckpointError(f"{source}: the embedding is stored as {dtype}, not a floating-point dtype")
    config.warn_if_unsafe_dtype(dtype)
    state = {k: v.to(dtype) for k, v in state.items()}
    skeleton.load_state_dict(state, strict=True, assign=True)
    return skeleton


# ---------------------------------------------------------------------------------------------- writing
def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out}: exists and is not empty; pass overwrite=True to replace it")


def hf_export(model: TransformerLM, *, dtype: Optional[torch.dtype] = None
              ) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(config.json dict, HF-named tensors) for `model`; ConfigError if transformers cannot represent it."""
    fam = infer_family(model.config)
    state = state_dict_for_save(model)
    dtype = dtype or state["embed.weight"].dtype
    cfg = hf_config_from_ours(model.config, dtype=str(dtype).removeprefix("torch."))
    tensors = {k: v.to(dtype).contiguous() for k, v in ours_state_to_hf(state, fam.model_type).items()}
    return cfg, tensors


def to_hf(model: TransformerLM, out_dir: Union[str, Path], *, overwrite: bool = False,
          dtype: Union[None, str, torch.dtype] = None) -> Path:
    """Write config.json + model.safetensors that transformers loads as the same function as `model`.

    The family follows from the numerics (hf_config.py); a config transformers cannot represent raises a
    ConfigError naming every field that does not fit. Files are written atomically; a non-empty out_dir is
    replaced only with overwrite=True (then stale weight files of an earlier export are removed).
    """
    from safetensors.torch import save

    if not isinstance(model, TransformerLM):
        raise TypeError(f"to_hf expects a qknorm.TransformerLM, got {type(model).__name__}")
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    cfg, tensors = hf_export(model, dtype=resolve_dtype(dtype))
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / INDEX_NAME, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(out / CONFIG_NAME, (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode())
    return out
