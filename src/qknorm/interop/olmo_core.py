"""OLMo-core trainer checkpoints -> TransformerLM, read with torch alone (OLMo-core is never imported).

    model = qknorm.from_olmo_core("runs/olmo2/step10000")        # or: qknorm convert --from-olmo-core DIR --out OUT

What OLMo-core 3.0's trainer writes for a checkpoint step (olmo_core/train/checkpoint.py, callbacks):

    stepN/
      model_and_optim/          torch.distributed.checkpoint folder of {"model": ..., "optim": ...}, one
        .metadata               __<rank>_<i>.distcp file set per rank that wrote (FSDP shards or whole tensors)
        __0_0.distcp ...        (olmo_core.distributed.checkpoint.save_model_and_optim_state)
      train/rank0.pt            trainer state (not read)
      .metadata.json            checkpoint metadata (not read)
      config.json               the run's experiment config (ConfigSaverCallback), the TransformerConfig under "model"

DIR may be the step directory or the DCP folder itself. The config is the first config.json holding a
TransformerConfig (under "model", or bare at the top level) in the DCP folder, its parent, DIR or DIR/..; its
translation to our ModelConfig is olmo_core_config.py.

Only the "model." tensors are read (optimizer state is skipped without being loaded), by
`torch.distributed.checkpoint.load` into whole tensors, so a checkpoint sharded by any number of ranks loads
the same way. The folder is read by dcp_reader.py, as our own sharded checkpoints are: `.metadata` (a pickle)
through the allow-list unpickler (OLMo-core's `_StorageInfo` is read as torch's, which has the same fields),
every non-tensor entry and every tensor with torch.load(weights_only=True), so a checkpoint cannot run code;
declared sizes are checked against the shard files before anything is allocated, and no file outside DIR is
read as model state (config.json may be one level up, as the trainer writes it).

max_seq_len (the context the model documents; RoPE tables are built lazily): the max_seq_len argument, else the
training sequence length config.json records (train_module.max_sequence_length, dataset.sequence_length), else
the transformers default of the family whose numerics the model has (as from_hf does for an unknown
max_position_embeddings: OLMo 2 2048, Qwen3 32768, Gemma 3 131072), else 2048.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ..config import ModelConfig
from ..io.dcp_reader import load_dcp, read_checked_metadata
from ..errors import CheckpointError, ConfigError
from ..io.names import CONFIG_NAME
from ..model import TransformerLM
from .hf import resolve_dtype
from .hf_config import FAMILIES, infer_family
from .olmo_core_config import model_config_from_olmo_core, sequence_length_of_run

__all__ = ["from_olmo_core", "find_olmo_core_checkpoint", "is_olmo_core_checkpoint", "OlmoCoreCheckpoint"]

DCP_DIR, METADATA = "model_and_optim", ".metadata"
DEFAULT_MAX_SEQ_LEN = 2048


@dataclasses.dataclass(frozen=True)
class OlmoCoreCheckpoint:
    """Where a checkpoint's parts are: the DCP folder and the run config holding the model config."""

    dcp_dir: Path
    config_path: Path
    model: Dict[str, Any]  # the TransformerConfig as a dict
    run: Dict[str, Any]  # the whole config.json (the model config itself when it was written bare)


# ---------------------------------------------------------------------------------------------- layout
def _dcp_dir(path: Path) -> Optional[Path]:
    for d in (path / DCP_DIR, path):
        if (d / METADATA).is_file():
            return d
    return None


def _model_config(doc: Any) -> Optional[Dict[str, Any]]:
    """The TransformerConfig in a config.json: under "model", or the document itself."""
    if not isinstance(doc, dict):
        return None
    for cand in (doc.get("model"), doc):
        if isinstance(cand, dict) and "d_model" in cand and "block" in cand:
            return cand
    return None


def is_olmo_core_checkpoint(path: Union[str, Path]) -> bool:
    """True when `path` (a step directory or its model_and_optim/ folder) holds an OLMo-core DCP checkpoint."""
    path = Path(path)
    if (path / DCP_DIR / METADATA).is_file():
        return True
    ours = (path / "meta.json").is_file() or (path.parent / "meta.json").is_file()  # qknorm's sharded checkpoints
    return (path / METADATA).is_file() and not ours


def find_olmo_core_checkpoint(path: Union[str, Path]) -> OlmoCoreCheckpoint:
    """Locate the DCP folder and the model config of an OLMo-core checkpoint; CheckpointError saying what lacks."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (expected an OLMo-core checkpoint step directory)")
    dcp_dir = _dcp_dir(path)
    if dcp_dir is None:
        raise CheckpointError(f"{path}: no {DCP_DIR}/{METADATA} or {METADATA} (not an OLMo-core checkpoint written "
                              "by its trainer or save_model_and_optim_state)")
    tried = []
    places = list(dict.fromkeys((dcp_dir, dcp_dir.parent, path, path.parent)))  # DIR, DIR/.. (both forms of DIR)
    for cand in (d / CONFIG_NAME for d in places):
        if not cand.is_file():
            continue
        try:
            doc = json.loads(cand.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cand}: not readable JSON ({e.__class__.__name__}: {e})") from None
        model = _model_config(doc)
        if model is not None:
            return OlmoCoreCheckpoint(dcp_dir, cand, model, doc)
        tried.append(str(cand))
    where = f"{', '.join(tried)} hold(s) no TransformerConfig" if tried else \
        f"no {CONFIG_NAME} in {' or '.join(map(str, places))}"
    raise CheckpointError(f"{path}: {where}; write the model config there, e.g. json.dump({{'model': "
                          "model_config.as_config_dict()}}, f)")


# ---------------------------------------------------------------------------------------------- DCP reading
def read_dcp_metadata(dcp_dir: Path, *, root: Optional[Path] = None):
    """The checkpoint's `Metadata` (global shape and dtype of every entry), read safely and checked against its
    shard files (dcp_reader.py)."""
    return read_checked_metadata(Path(dcp_dir), root=root)


def read_model_tensors(dcp_dir: Path, prefix: str = "model.", *,
                       root: Optional[Path] = None) -> Dict[str, torch.Tensor]:
    """Every tensor under `prefix` in a DCP folder, whole (shards of any number of ranks joined), on CPU; `root`:
    the directory being loaded, which the folder and its files must lie in (default: the folder)."""
    metadata = read_dcp_metadata(dcp_dir, root=root)
    entries = {k[len(prefix):]: v for k, v in metadata.state_dict_metadata.items() if k.startswith(prefix)}
    if not entries:
        raise CheckpointError(f"{dcp_dir}: the checkpoint has no '{prefix}' entries (no model state)")
    bad = sorted(k for k, v in entries.items() if not isinstance(v, TensorStorageMetadata))
    if bad:
        raise CheckpointError(f"{dcp_dir}: model entry {bad[0]!r} is not a tensor")
    # sizes were checked against the shard files' bytes (dcp_reader.check_layout) before this allocation
    state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in entries.items()}
    load_dcp({prefix.rstrip("."): state}, dcp_dir, metadata)
    return state


# ---------------------------------------------------------------------------------------------- key map
_BLOCK_KEYS = {
    "attention.w_q.{p}": "attn.q_proj.{p}", "attention.w_k.{p}": "attn.k_proj.{p}",
    "attention.w_v.{p}": "attn.v_proj.{p}", "attention.w_out.{p}": "attn.o_proj.{p}",
    "attention.q_norm.weight": "attn.q_norm.weight", "attention.k_norm.weight": "attn.k_norm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
_NORM_KEYS = {  # OLMo-core's block norms by placement (its attention_norm is the input norm of a pre-norm block)
    "pre": {"attention_norm": "attn_norm_in", "feed_forward_norm": "mlp_norm_in"},
    "reordered": {"attention_norm": "attn_norm_out", "feed_forward_norm": "mlp_norm_out"},
    "sandwich": {"attention_norm": "attn_norm_in", "post_attention_norm": "attn_norm_out",
                 "feed_forward_norm": "mlp_norm_in", "post_feed_forward_norm": "mlp_norm_out"},
}
_TOP_KEYS = {"embeddings.weight": "embed.weight", "lm_head.norm.weight": "norm.weight",
             "lm_head.w_out.weight": "lm_head.weight"}


def key_map(config: ModelConfig) -> Dict[str, str]:
    """OLMo-core state-dict key -> ours, for every key a model of `config` has."""
    block = {k.format(p="weight"): v.format(p="weight") for k, v in _BLOCK_KEYS.items()}
    if config.attention_bias:
        block.update({k.format(p="bias"): v.format(p="bias") for k, v in _BLOCK_KEYS.items() if "{p}" in k})
    block.update({f"{k}.weight": f"{v}.weight" for k, v in _NORM_KEYS[config.placement.value].items()})
    out = {f"blocks.{i}.{k}": f"layers.{i}.{v}" for i in range(config.n_layers) for k, v in block.items()}
    return {**_TOP_KEYS, **out}


def olmo_core_state_to_ours(state: Dict[str, torch.Tensor], config: ModelConfig, expected: Dict[str, Tuple[int, ...]],
                            *, source: str) -> Dict[str, torch.Tensor]:
    """Map OLMo-core tensors onto our keys: every key used once, every shape as `expected`, norm gains stored
    as offsets (w - 1) when the config has norm_offset 1 (Gemma 3 numerics)."""
    mapping = key_map(config)
    if config.tie_embeddings and "lm_head.w_out.weight" in state:  # the tied head, saved under both names
        head, emb = state["lm_head.w_out.weight"], state.get("embeddings.weight")
        if emb is None or head.shape != emb.shape or not torch.equal(head, emb):
            raise CheckpointError(f"{source}: tie_word_embeddings is true but 'lm_head.w_out.weight' differs from "
                                  "'embeddings.weight'")
        state = {k: v for k, v in state.items() if k != "lm_head.w_out.weight"}
    extra = sorted(k for k in state if k not in mapping or mapping[k] not in expected)
    if extra:
        raise CheckpointError(f"{source}: unexpected model tensor {extra[0]!r} ({len(extra)} unused); it has no "
                              "place in the model its config describes")
    out: Dict[str, torch.Tensor] = {}
    for theirs, ours in mapping.items():
        if ours not in expected:
            continue
        if theirs not in state:
            raise CheckpointError(f"{source}: missing model tensor {theirs!r} (qknorm {ours!r}, shape "
                                  f"{tuple(expected[ours])})")
        t = state[theirs]
        if tuple(t.shape) != tuple(expected[ours]):
            raise CheckpointError(f"{source}: {theirs!r} has shape {tuple(t.shape)} but the config implies "
                                  f"{tuple(expected[ours])}")
        # OLMo-core's RMSNorm scales by w (init 1); our Gemma numerics by 1 + w (init 0): store w - 1, exact in
        # fp32 for every w >= 0.5 (Sterbenz), within half an ulp of |w - 1| below that
        is_norm = ours.endswith("norm.weight") or "_norm_" in ours
        out[ours] = t - 1.0 if config.norm_offset and is_norm else t
    return out


# ---------------------------------------------------------------------------------------------- building
def _default_max_seq_len(config: ModelConfig, run: Dict[str, Any]) -> int:
    recorded = sequence_length_of_run(run)
    if recorded:
        return recorded
    try:
        return int(FAMILIES[infer_family(config).model_type].defaults["max_position_embeddings"])
    except ConfigError:  # numerics no HF family has (e.g. a reordered block with head-wise QK-norm)
        return DEFAULT_MAX_SEQ_LEN


def olmo_core_model_config(ckpt: OlmoCoreCheckpoint, *, max_seq_len: Optional[int] = None) -> ModelConfig:
    """Our ModelConfig for the checkpoint (max_seq_len as the module docstring says)."""
    config = model_config_from_olmo_core(ckpt.model, source=str(ckpt.config_path),
                                         max_seq_len=max_seq_len or DEFAULT_MAX_SEQ_LEN)
    if max_seq_len is None:
        config = config.replace(max_seq_len=_default_max_seq_len(config, ckpt.run))
    return config


def from_olmo_core(path: Union[str, Path], *, dtype: Union[None, str, torch.dtype] = None,
                   max_seq_len: Optional[int] = None) -> TransformerLM:
    """A TransformerLM computing the same function as the OLMo-core model of a checkpoint step directory.

    path: the step directory (model_and_optim/ + config.json) or the DCP folder itself (config.json beside it
    or one level up). dtype: None keeps the checkpoint's dtype; else fp32/bf16/fp16 or a torch dtype.
    max_seq_len: see the module docstring. Raises CheckpointError naming the file or config field that is
    missing or cannot be reproduced (other block types, norms, attention variants, MoE ...).
    """
    if max_seq_len is not None and (isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or
                                    max_seq_len < 1):
        raise ConfigError(f"max_seq_len={max_seq_len!r} must be an integer >= 1")
    ckpt = find_olmo_core_checkpoint(path)
    config = olmo_core_model_config(ckpt, max_seq_len=max_seq_len)
    with torch.device("meta"):
        skeleton = TransformerLM(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tensors = read_model_tensors(ckpt.dcp_dir, root=Path(path))
    state = olmo_core_state_to_ours(tensors, config, expected, source=str(ckpt.dcp_dir))
    target = resolve_dtype(dtype) or state["embed.weight"].dtype
    if not target.is_floating_point:
        raise CheckpointError(f"{ckpt.dcp_dir}: the embedding is stored as {target}, not a floating-point dtype")
    config.warn_if_unsafe_dtype(target)
    skeleton.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=True, assign=True)
    return skeleton
