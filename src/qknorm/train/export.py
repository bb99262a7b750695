"""The consolidated model at the end of a run: `model.safetensors` + `config.json` written by rank 0.

`full_model` gathers the full state with `StateDictOptions(full_state_dict=True, cpu_offload=True)` (collective
with more than one process) into a plain CPU `TransformerLM`; `export_model` saves it with io/model_dir.py save_model,
so it loads with `qknorm.load_model` and exports with `qknorm.to_hf`. Under
`QKNORM_DEBUG_DIGEST_DIR` every rank also writes its parameter digests (distributed.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from torch import nn

from ..model import TransformerLM
from ..io.model_dir import save_model
from .runtime import Runtime

__all__ = ["full_model", "export_model"]


def full_model(rt: Runtime, model: nn.Module) -> Optional[TransformerLM]:
    """A plain CPU `TransformerLM` with the full weights of (wrapped) `model` on rank 0, None on the other ranks.

    Collective with more than one process (the state is gathered to rank 0); in a single process: the model.
    """
    inner = rt.unwrap(model)
    if rt.world_size == 1:
        return inner
    state = rt.model_state_dict(model)  # full_state_dict=True, cpu_offload=True: rank 0 only
    if not rt.is_main:
        return None
    plain = TransformerLM(inner.config, device="meta")
    plain.load_state_dict(state, strict=True, assign=True)
    return plain


def export_model(rt: Runtime, model: nn.Module, out_dir: str | Path) -> Optional[Path]:
    """Write the consolidated `model.safetensors` + `config.json` to `out_dir` on rank 0 (collective)."""
    plain = full_model(rt, model)
    written = save_model(plain, out_dir) if plain is not None else None
    write_digests = getattr(rt, "write_digests", None)
    if write_digests is not None:
        write_digests(model)
    rt.barrier()
    return written
