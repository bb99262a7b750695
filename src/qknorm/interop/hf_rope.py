"""HF RoPE parameters <-> our rope_theta / rope_local_theta / rope_scaling, resolved the way transformers 5.x does.

transformers reads, for a family with one RoPE (Llama, Qwen2/3, Mistral, OLMo 2): the legacy `rope_scaling`
object if set, else `rope_parameters`; `rope_theta` inside it, else the top-level `rope_theta`, else the class
default; for llama3/yarn a missing `original_max_position_embeddings` is the top-level one if the config has it,
else `max_position_embeddings`. Gemma 3 keeps one parameter set per layer type (`full_attention`,
`sliding_attention`); legacy configs give `rope_theta` + `rope_scaling` (full layers) and `rope_local_base_freq`.

Supported rope_type values: default, linear, llama3, yarn (nn/rope.py computes each as transformers does).
Refused, in one line naming the field and value: dynamic (its frequencies depend on the longest sequence seen,
state kept across calls), longrope and any other type, partial_rotary_factor != 1, and on Gemma 3 a scaled
sliding-layer RoPE that differs from the full layers' (our local RoPE is plain, or the full layers' own).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional

from ..config import FULL, SLIDING, ModelConfig
from ..errors import CheckpointError, ConfigError
from ..rope_scaling import RopeScaling, RopeType

SUPPORTED = ("default", "linear", "llama3", "yarn")


def _mscale(factor: float, mscale: float = 1) -> float:  # YaRN's attention-factor formula (DeepSeek's form)
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def scaling_from_hf(params: Dict[str, Any], field: str, *, max_pos: int, top_original: Optional[int],
                    nested: bool, source: str) -> Optional[RopeScaling]:
    """The RopeScaling of one HF RoPE parameter dict (None for rope_type default)."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED:
        why = ("its frequencies depend on the longest sequence seen so far" if rope_type == "dynamic" else
               f"supported: {', '.join(SUPPORTED)}")
        raise CheckpointError(f"{source}: {field}.rope_type={rope_type!r} is not supported ({why})")
    prf = params.get("partial_rotary_factor", 1.0)
    if prf not in (None, 1, 1.0):
        raise CheckpointError(f"{source}: {field}.partial_rotary_factor={prf!r} is not supported (RoPE on the "
                              "whole head only)")
    if rope_type == "default":
        return None

    def need(key: str) -> Any:
        if params.get(key) is None:
            raise CheckpointError(f"{source}: {field}.{key} is missing (rope_type {rope_type!r} needs it)")
        return params[key]

    if rope_type == "linear":
        return _checked(source, field, rope_type=RopeType.LINEAR, factor=float(need("factor")))
    original = params.get("original_max_position_embeddings")
    if not nested and top_original is not None:
        original = top_original  # transformers lets a top-level value win (Phi-3 style configs)
    original = int(max_pos if original is None else original)
    if rope_type == "llama3":
        return _checked(source, field, rope_type=RopeType.LLAMA3, factor=float(need("factor")),
                        low_freq_factor=float(need("low_freq_factor")),
                        high_freq_factor=float(need("high_freq_factor")), original_max_position_embeddings=original)
    if "factor" not in params:
        raise CheckpointError(f"{source}: {field}.factor is missing (rope_type 'yarn' needs it)")
    factor = params["factor"]
    factor = float(max_pos / original if factor is None else factor)
    attention = params.get("attention_factor")
    mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
    if attention is None and mscale and mscale_all:
        attention = float(_mscale(factor, mscale) / _mscale(factor, mscale_all))
    truncate = None
    if "truncate" in params:
        truncate = bool(params["truncate"])
        if nested and not truncate:  # transformers reads `truncate` from the top level only, so here it is true
            warnings.warn(f"{source}: {field}.truncate={params['truncate']!r} is ignored, as transformers "
                          "ignores it for per-layer-type RoPE (the logits stay the same)", UserWarning, stacklevel=4)
            truncate = None
    return _checked(source, field, rope_type=RopeType.YARN, factor=factor, original_max_position_embeddings=original,
                    beta_fast=float(params["beta_fast"]) if params.get("beta_fast") else None,
                    beta_slow=float(params["beta_slow"]) if params.get("beta_slow") else None,
                    attention_factor=None if attention is None else float(attention), truncate=truncate)


def _checked(source: str, field: str, **kw: Any) -> RopeScaling:
    try:
        return RopeScaling(**kw)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {field}: {e}") from None


def _theta(params: Dict[str, Any], default: float) -> float:
    theta = params.get("rope_theta")
    return float(default if theta is None else theta)


def read_rope(cfg: Dict[str, Any], *, per_type: bool, defaults: Dict[str, Any], source: str) -> Dict[str, Any]:
    """rope_theta / rope_local_theta / rope_scaling of an HF text config dict."""
    max_pos = cfg.get("max_position_embeddings", defaults["max_position_embeddings"])
    legacy = cfg.get("rope_scaling")
    if not per_type:
        params = dict(legacy or cfg.get("rope_parameters") or {})
        field = "rope_scaling" if legacy else "rope_parameters"
        scaling = scaling_from_hf(params, field, max_pos=max_pos, nested=False, source=source,
                                  top_original=cfg.get("original_max_position_embeddings"))
        return dict(rope_theta=_theta(params, cfg.get("rope_theta") or defaults["rope_theta"]), rope_scaling=scaling)
    raw = cfg.get("rope_parameters")
    params = {k: dict(v) for k, v in (raw or {}).items() if isinstance(v, dict)}
    if raw and not (set(params) & {FULL, SLIDING}):
        raise CheckpointError(f"{source}: rope_parameters={raw!r} must be keyed by layer type ({FULL!r}, "
                              f"{SLIDING!r}) for {cfg.get('model_type')}")
    full, local = params.get(FULL, {"rope_type": "default"}), params.get(SLIDING, {"rope_type": "default"})
    if legacy:
        full.update(legacy)
    kw = dict(max_pos=max_pos, top_original=None, nested=True, source=source)
    theta = _theta(full, cfg.get("rope_theta") or defaults["rope_theta"])
    scaling = scaling_from_hf(full, f"rope_parameters.{FULL}", **kw)
    ltheta = _theta(local, cfg.get("rope_local_base_freq") or defaults["rope_local_base_freq"])
    lscaling = scaling_from_hf(local, f"rope_parameters.{SLIDING}", **kw)
    if (ltheta, lscaling) == (theta, scaling):  # one RoPE for every layer
        return dict(rope_theta=theta, rope_local_theta=None, rope_scaling=scaling)
    if lscaling is not None:
        raise CheckpointError(f"{source}: rope_parameters.{SLIDING}.rope_type={lscaling.rope_type.value!r} is not "
                              "supported (sliding layers take plain RoPE, or exactly the full-attention layers' RoPE)")
    return dict(rope_theta=theta, rope_local_theta=ltheta, rope_scaling=scaling)


def scaling_to_hf(theta: float, scaling: Optional[RopeScaling]) -> Dict[str, Any]:
    """One HF rope_parameters dict."""
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_theta": theta, **scaling.to_dict()}


def write_rope(config: ModelConfig, *, per_type: bool) -> Dict[str, Any]:
    """The config.json RoPE keys of `config`: v5 `rope_parameters` and the legacy keys transformers 4.x reads."""
    c = config
    rope = scaling_to_hf(c.rope_theta, c.rope_scaling)
    legacy = {} if c.rope_scaling is None else {"rope_scaling": c.rope_scaling.to_dict()}
    if not per_type:
        return dict(rope_parameters=rope, rope_theta=c.rope_theta, **legacy)
    ltheta, lscaling = c.local_rope
    return dict(rope_parameters={FULL: rope, SLIDING: scaling_to_hf(ltheta, lscaling)}, rope_theta=c.rope_theta,
                rope_local_base_freq=ltheta, **legacy)

