"""Interop with Hugging Face transformers: exact conversion both ways, a per-block divergence report, and
`patch_hf`, which puts our fused QK-norm + RoPE op into HF attention.

  hf.py          from_hf / to_hf (directories are read without importing transformers)
  hf_config.py   config.json <-> ModelConfig per family
  hf_keys.py     one flat key map per family; the Gemma folded-offset check
  olmo_core.py   from_olmo_core: OLMo-core trainer checkpoints (DCP + config.json), read with torch alone
  olmo_core_config.py  OLMo-core TransformerConfig JSON -> ModelConfig
  divergence.py  compare_with_hf -> DivergenceReport (which block first differs, by how much)
  patch.py       patch_hf / unpatch_hf

Importing this package imports neither transformers nor the submodules; use the names below.
"""
from __future__ import annotations

__all__ = ["from_hf", "to_hf", "from_olmo_core", "compare_with_hf", "DivergenceReport", "patch_hf", "unpatch_hf"]


def __getattr__(name):
    if name in ("from_hf", "to_hf"):
        from . import hf

        return getattr(hf, name)
    if name == "from_olmo_core":
        from . import olmo_core

        return olmo_core.from_olmo_core
    if name in ("compare_with_hf", "DivergenceReport"):
        from . import divergence

        return getattr(divergence, name)
    if name in ("patch_hf", "unpatch_hf"):
        from . import patch

        return getattr(patch, name)
    raise AttributeError(f"module 'qknorm.interop' has no attribute {name!r}")
