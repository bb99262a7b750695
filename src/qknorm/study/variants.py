"""The study's variants: which norms a model has, everything else equal.

Every variant is a preset plus overrides, built at the study profile's ONE model shape, so only the norms (and
each family's norm numerics) differ between them:
  baseline  llama preset: pre-norm RMSNorm, no QK-norm
  qknorm    llama preset + per-head QK RMSNorm (the Qwen3 form): the only difference to baseline
  olmo2     olmo2 preset: reordered norms (on the sub-layer outputs) + full-width QK-norm, fp32 weight multiply
  gemma3    gemma3 preset: sandwich norms with 1+w gains, per-head QK-norm, sqrt(d) embedding scale, GeGLU,
            tied head. The sliding window is switched off and the query scale is head_dim**-0.5, so every
            variant attends over the same span with the same score scale.
  postln    postln preset: classic post-LN (LayerNorm with bias), no QK-norm
Each family keeps its own RoPE theta (1e4..1e6); at the study's sequence lengths this changes little.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from ..config import ModelConfig
from ..presets import get_config

__all__ = ["Variant", "VARIANTS", "model_config"]


@dataclasses.dataclass(frozen=True)
class Variant:
    preset: str
    overrides: Mapping[str, Any]
    description: str


VARIANTS: Dict[str, Variant] = {
    "baseline": Variant("llama", {}, "pre-norm RMSNorm, no QK-norm (Llama)"),
    "qknorm": Variant("llama", {"qk_norm": "head"}, "pre-norm + per-head QK RMSNorm (Qwen3 form)"),
    "olmo2": Variant("olmo2", {}, "reordered norms + full-width QK-norm (OLMo 2 numerics)"),
    "gemma3": Variant("gemma3", {"sliding_window": None, "query_pre_attn_scalar": None},
                      "sandwich norms + per-head QK-norm (Gemma 3 numerics, no sliding window)"),
    "postln": Variant("postln", {}, "classic post-LN (LayerNorm), no QK-norm"),
}


def model_config(variant: str, shape: Mapping[str, Any], vocab_size: int) -> ModelConfig:
    """The ModelConfig of `variant` at the study's `shape` with the data's vocabulary."""
    v = VARIANTS[variant]
    return get_config(v.preset, "debug", **{**shape, "vocab_size": vocab_size, **v.overrides})
