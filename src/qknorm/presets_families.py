"""Presets of the families that normalize q and k in their own ways (interop/hf_variants.py), read from the
published config.json each bundles in the catalogue (catalog/configs/, no download): a preset is exactly what
`qknorm.from_hf` builds for that model, so its numbers are the published ones by construction.

  olmo       OLMo 1.7 7B: non-parametric LayerNorms, clip_qkv 8, no QK-norm     allenai/OLMo-7B-0424-hf
  olmo3      OLMo 3 7B: OLMo 2 + 3 sliding : 1 full layers                       allenai/Olmo-3-1025-7B
  cohere     Command R+: parallel block, per-head QK LayerNorm                  CohereForAI/c4ai-command-r-plus
  stablelm   StableLM 2 12B: per-head QK LayerNorm, partial RoPE                stabilityai/stablelm-2-12b
  exaone4    EXAONE 4.0 32B: reordered norms, RoPE on sliding layers only       LGAI-EXAONE/EXAONE-4.0-32B
  hunyuan    HunYuan 7B: QK-norm after RoPE                                     tencent/Hunyuan-7B-Instruct
  llama4     Llama 4 Scout (text): weightless QK-norm after RoPE, NoPE layers,  meta-llama/Llama-4-Scout-17B-16E
             chunked attention, 16 experts top-1 with a shared expert
  olmoe      OLMoE 1B-7B: 64 experts top-8                                      allenai/OLMoE-1B-7B-0924
  qwen3_moe  Qwen3 30B-A3B: 128 experts top-8                                   Qwen/Qwen3-30B-A3B

Each has its published size and `debug`: the same design at a CPU size (catalog.small_config: 4 layers of the
published pattern, width 64, 4 heads of 16, byte vocabulary, windows and chunks 16, at most 8 experts). The
configs are read on first use, so `import qknorm` reads no file.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict

from .config import ModelConfig, check_field_names
from .errors import ConfigError

__all__ = ["FamilyPreset", "FAMILY_PRESETS"]

_DEBUG = dict(n_layers=4, d_model=64, n_heads=4, head_dim=16, d_ff=128, vocab_size=256, window=16)


@functools.lru_cache(maxsize=None)
def _published(entry: str) -> ModelConfig:
    from .catalog import CONFIG_DIR, read_entry

    return read_entry(CONFIG_DIR / f"{entry}.json").config


@dataclasses.dataclass(frozen=True)
class FamilyPreset:
    """A family read from its bundled published config: `size` (the published one) and `debug`."""

    name: str
    entry: str  # the catalogue file (catalog/configs/<entry>.json)
    size: str

    @property
    def sizes(self) -> Dict[str, None]:
        return {"debug": None, self.size: None}

    def fields(self, size: str = "debug") -> Dict[str, Any]:
        """Every field of `size`, explicit (the published config's resolved values)."""
        if size not in self.sizes:
            raise ConfigError(f"unknown size {size!r} for preset {self.name!r}; choose one of: {', '.join(self.sizes)}")
        from .catalog import small_config

        config = _published(self.entry)
        return (small_config(config, **_DEBUG) if size == "debug" else config).to_dict()

    def __call__(self, size: str = "debug", **overrides: Any) -> ModelConfig:
        """The config of `size` with `overrides`, built from scratch as every preset's (presets.py); the per-layer
        fields are explicit, so a different n_layers needs its layer_types (and NoPE / dense layers) too."""
        check_field_names(overrides)
        return ModelConfig(**{**self.fields(size), **overrides})


FAMILY_PRESETS: Dict[str, FamilyPreset] = {p.name: p for p in (
    FamilyPreset("olmo", "olmo-7b-0424-hf", "7b"),
    FamilyPreset("olmo3", "olmo-3-1025-7b", "7b"),
    FamilyPreset("cohere", "command-r-plus", "104b"),
    FamilyPreset("stablelm", "stablelm-2-12b", "12b"),
    FamilyPreset("exaone4", "exaone-4.0-32b", "32b"),
    FamilyPreset("hunyuan", "hunyuan-7b-instruct", "7b"),
    FamilyPreset("llama4", "llama-4-scout-17b-16e", "scout"),
    FamilyPreset("olmoe", "olmoe-1b-7b-0924", "1b-7b"),
    FamilyPreset("qwen3_moe", "qwen3-30b-a3b", "30b-a3b"),
)}
