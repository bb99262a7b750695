"""Hugging Face config.json <-> `ModelConfig`, per family, without importing transformers.

Each supported family is a row of data (`FAMILIES`, hf_families.py): its HF model_type and architecture, the
numerics our model needs to be the same function (placement, QK-norm scope, norm cast and offset, embedding
scale), the class defaults of transformers 5.x for every field we read, because `save_pretrained` may leave out
a field that equals its default (sub-configs such as Gemma 3's `text_config` especially), and for the families
with a QK-norm/RoPE variant the hooks that read and write its fields (hf_variants.py). A test keeps the
defaults in sync with the installed transformers.

Reading (`config_from_hf`) resolves RoPE the way transformers 5.x does (hf_rope.py: default, linear, llama3 and
yarn, per layer type for Gemma 3) and sliding windows per family (Gemma 3 layer_types or its pattern; Qwen's
use_sliding_window + max_window_layers; Mistral's window on every layer). The layers come back in one canonical
form: no window when no layer slides, `global_every` for Gemma's every-Nth-layer pattern (0 when every layer
slides; a Mistral config always has 0, its rule, window or not), explicit `layer_types` otherwise. Every feature our model cannot reproduce exactly raises a
CheckpointError naming the field and its value; a field transformers itself ignores (Gemma 3's
attn_logit_softcapping) is ignored with a warning, so the logits stay the same.

Writing (`hf_config_from_ours`) infers the family from the numerics (never from a name; `Family.accepts`):
  parallel block, bias-free LayerNorm, interleaved RoPE          -> cohere
  LayerNorm blocks (pre or parallel), rotate-half RoPE           -> stablelm
  pre + LayerNorms without gain or bias, no QK-norm               -> olmo (OLMo 1; clip_qkv: olmo, olmoe only)
  reordered + head QK-norm                                        -> exaone4
  pre + head QK-norm after RoPE                                   -> hunyuan_v1_dense
  pre + interleaved RoPE                                          -> llama4_text
  reordered + full QK-norm + fp32 cast: olmo3 with sliding layers or a second RoPE, else olmo2
  sandwich  + head QK-norm + offset 1 + fp32    -> gemma3_text
  pre       + head QK-norm + input cast         -> qwen3
  pre       + no QK-norm   + input cast, then by attention bias and windows:
              bias on q/k/v but not o                          -> qwen2 (its attention always has exactly that)
              any sliding layer, or global_every=0 ("the window applies to every layer", Mistral's rule)
                                                               -> mistral (which refuses a mix of layer types)
              otherwise (no window; bias on all of q/k/v/o or none) -> llama
and raises a ConfigError listing every field transformers cannot represent for that family: the checks below,
then the written config read back (every field it does not reproduce, whatever the combination of variants).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Optional, Tuple

from ..config import FULL, SLIDING, ModelConfig, field_names
from ..errors import CheckpointError, ConfigError
from ..io.names import CONFIG_NAME
from .hf_families import FAMILIES, SUPPORTED_MODEL_TYPES, Family
from .hf_rope import read_rope, write_rope

__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "Family", "text_config", "config_from_hf", "canonical_layers",
           "infer_family", "unrepresentable", "hf_config_from_ours"]

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_ACT_TO_HF = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}


# ---------------------------------------------------------------------------------------------- reading
def text_config(cfg: Dict[str, Any], *, source: str) -> Tuple[Dict[str, Any], Family]:
    """The text model's config dict and its family (a Gemma 3 multimodal config holds it as `text_config`)."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: config is not a JSON object")
    model_type = cfg.get("model_type")
    if model_type == "gemma3":
        sub = cfg.get("text_config") or {}
        if not isinstance(sub, dict):
            raise CheckpointError(f"{source}: text_config of a gemma3 config is not a JSON object")
        cfg, model_type = sub, sub.get("model_type", "gemma3_text")
    if model_type is None:
        raise CheckpointError(f"{source}: config has no model_type; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported; supported: "
                              f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return cfg, FAMILIES[model_type]


def config_from_hf(cfg: Dict[str, Any], *, source: str = CONFIG_NAME,
                   max_seq_len: Optional[int] = None) -> Tuple[ModelConfig, Family]:
    """Translate an HF config dict (config.json, or `model.config.to_dict()`) into our `ModelConfig`.

    max_seq_len: overrides max_position_embeddings (see `_max_seq_len` for what an unknown one becomes).
    """
    multimodal = isinstance(cfg, dict) and cfg.get("model_type") == "gemma3"
    cfg, fam = text_config(cfg, source=source)
    if fam.prepare is not None:
        cfg = fam.prepare(cfg, source)
    d = fam.defaults

    def get(name: str) -> Any:  # the value as written (null included), else transformers' class default
        return cfg[name] if name in cfg else d.get(name)

    def reject(field: str, value: Any, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: {field}={value!r} is not supported ({why})")

    n_layers, n_heads = int(get("num_hidden_layers")), int(get("num_attention_heads"))
    head_dim = get("head_dim") or get("hidden_size") // n_heads
    act = cfg.get(fam.act_field) or cfg.get("hidden_act") or d[fam.act_field]
    if act not in _ACTIVATIONS:
        raise reject(fam.act_field, act, f"supported: {', '.join(_ACTIVATIONS)}")
    if cfg.get("mlp_bias"):
        raise reject("mlp_bias", True, "the gated MLP has no biases")
    if cfg.get("use_bidirectional_attention"):
        raise reject("use_bidirectional_attention", True, "only causal attention is supported")
    if cfg.get("attn_logit_softcapping") is not None:
        warnings.warn(f"{source}: attn_logit_softcapping={cfg['attn_logit_softcapping']} is ignored, as "
                      "transformers' Gemma 3 attention ignores it (the logits stay the same)", UserWarning,
                      stacklevel=3)
    out: Dict[str, Any] = dict(
        vocab_size=int(get("vocab_size")), d_model=int(get("hidden_size")), n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(get("num_key_value_heads") or n_heads), head_dim=int(head_dim),
        d_ff=int(get(fam.d_ff_field)),
        max_seq_len=_max_seq_len(cfg, fam, source) if max_seq_len is None else max_seq_len,
        qk_norm=fam.qk_norm, placement=fam.placement, norm_type="rmsnorm", norm_eps=float(get(fam.eps_field)),
        norm_offset=fam.norm_offset, norm_cast=fam.norm_cast, **_bias(fam, get), activation=_ACTIVATIONS[act],
        embed_scale=fam.embed_scale,
        tie_embeddings=bool(get("tie_word_embeddings")), init_std=float(get("initializer_range") or 0.02),
    )
    if fam.has_query_scalar:
        out["query_pre_attn_scalar"] = float(get("query_pre_attn_scalar"))
    if fam.has_final_softcap and get("final_logit_softcapping") is not None:
        if multimodal:  # Gemma3ForConditionalGeneration never applies it; its logits are what we match
            warnings.warn(f"{source}: text_config.final_logit_softcapping={get('final_logit_softcapping')} is "
                          "ignored, as transformers' Gemma3ForConditionalGeneration ignores it", UserWarning,
                          stacklevel=2)
        else:
            out["final_softcap"] = float(get("final_logit_softcapping"))
    out.update(_layers(cfg, fam, n_layers, source))
    out.update(read_rope(cfg, per_type=fam.per_type_rope, defaults=d, source=source))
    if fam.read is not None:
        out.update(fam.read(get, out, source))
    try:
        return ModelConfig(**out), fam
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def _bias(fam: Family, get) -> Dict[str, bool]:
    if fam.bias == "qkv":
        return dict(attention_bias=True, o_proj_bias=False)
    if fam.bias == "use_qkv_bias":
        return dict(attention_bias=bool(get("use_qkv_bias")), o_proj_bias=False)
    flag = fam.bias == "flag" and bool(get("attention_bias"))
    return dict(attention_bias=flag, o_proj_bias=flag)


def _max_seq_len(cfg: Dict[str, Any], fam: Family, source: str) -> int:
    """max_position_embeddings; missing, null or not a positive integer (OLMo-core writes -1, "unknown": its
    RoPE has no length limit) -> the family's transformers default (e.g. olmo2 and llama 2048, qwen3 32768,
    gemma3 131072), the value transformers itself assumes when the field is absent. Only a stated field that is
    unknown warns; raise the value with `from_hf(..., max_seq_len=N)` / `convert --max-seq-len N`."""
    value, default = cfg.get("max_position_embeddings"), int(fam.defaults["max_position_embeddings"])
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and float(value).is_integer():
        return int(value)
    if "max_position_embeddings" in cfg:
        warnings.warn(f"{source}: max_position_embeddings={value!r} (unknown): max_seq_len set to {default}, the "
                      f"{fam.model_type} default; pass max_seq_len=N (convert --max-seq-len N) for longer sequences",
                      UserWarning, stacklevel=4)
    return default


def _layers(cfg: Dict[str, Any], fam: Family, n_layers: int, source: str) -> Dict[str, Any]:
    """sliding_window / global_every / layer_types of the HF config, in the canonical form (module docstring)."""
    if fam.sliding == "none":
        if cfg.get("sliding_window") is not None and cfg.get("use_sliding_window", True):
            warnings.warn(f"{source}: sliding_window={cfg['sliding_window']} is ignored ({fam.model_type} in "
                          "transformers has no sliding-window layers)", UserWarning, stacklevel=4)
        return {}
    window = cfg.get("sliding_window", fam.defaults["sliding_window"])
    if fam.sliding == "all":  # Mistral: the window, when set, applies to every layer
        return dict(sliding_window=None if window is None else int(window), global_every=0)
    types = cfg.get("layer_types")
    if fam.sliding == "qwen":
        window = window if cfg.get("use_sliding_window", fam.defaults["use_sliding_window"]) else None
        if types is None:
            start = cfg.get("max_window_layers", fam.defaults["max_window_layers"])
            types = [SLIDING if window is not None and i >= start else FULL for i in range(n_layers)]
    elif types is None:  # Gemma 3: sliding unless (i+1) % pattern == 0
        pattern = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or \
            fam.defaults["sliding_window_pattern"]
        types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers)]
    types = tuple(types)
    if len(types) != n_layers or any(t not in (SLIDING, FULL) for t in types):
        raise CheckpointError(f"{source}: layer_types={list(types)!r} must give one of {SLIDING!r}, {FULL!r} for "
                              f"each of the {n_layers} layers")
    if SLIDING in types and window is None:
        raise CheckpointError(f"{source}: layer_types has sliding_attention layers but sliding_window is not set"
                              + (" (use_sliding_window is false)" if fam.sliding == "qwen" else ""))
    return canonical_layers(types, window)


def canonical_layers(types: Tuple[str, ...], window: Optional[int]) -> Dict[str, Any]:
    """The ModelConfig fields for per-layer `types` with `window`: none when no layer slides, global_every for
    the pattern "full iff (i+1) % g == 0" (0: every layer slides), else explicit layer_types."""
    if window is None or SLIDING not in types:
        return {}
    window = int(window)
    if FULL not in types:
        return dict(sliding_window=window, global_every=0)
    g = types.index(FULL) + 1
    if types == tuple(FULL if (i + 1) % g == 0 else SLIDING for i in range(len(types))):
        return dict(sliding_window=window, global_every=g)
    return dict(sliding_window=window, layer_types=types)


# ---------------------------------------------------------------------------------------------- writing
def infer_family(config: ModelConfig) -> Family:
    """The HF family with our config's signature (block placement, QK-norm scope, norm type, RoPE layout, QK-norm
    place: `Family.accepts`); among several, the one its attention biases and windows call for (module docstring)."""
    c = config
    found = [fam for fam in FAMILIES.values() if fam.accepts(c)]
    if not found:
        known = "; ".join(f"placement={f.placement} qk_norm={f.qk_norm} -> {f.model_type}" for f in FAMILIES.values())
        raise ConfigError(f"placement={c.placement.value!r} with qk_norm={c.qk_norm.value!r} is not representable "
                          f"in transformers (with norm_type={c.norm_type.value!r}, rope_interleaved="
                          f"{c.rope_interleaved}, qk_norm_after_rope={c.qk_norm_after_rope}; supported: {known})")
    if len(found) == 1:
        return found[0]
    sliding = SLIDING in c.resolved_layer_types()
    if {f.model_type for f in found} == {"olmo2", "olmo3"}:
        return FAMILIES["olmo3" if sliding or c.rope_local_theta is not None else "olmo2"]
    if c.attention_bias and not c.o_proj_bias:
        return FAMILIES["qwen2"]
    if sliding or (c.layer_types is None and c.global_every == 0):
        return FAMILIES["mistral"]
    return FAMILIES["llama"]


def unrepresentable(config: ModelConfig, fam: Family) -> List[str]:
    """Every field of `config` that transformers' `fam` cannot reproduce, as 'field=value (why)'."""
    c, bad = config, []

    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            value = getattr(c, field)
            value = value.to_dict() if hasattr(value, "to_dict") else getattr(value, "value", value)
            bad.append(f"{field}={value!r} ({why})")

    if fam.read is None:  # the families with variant fields: the read-back check in hf_config_from_ours
        need(c.qk_norm_type.value == "rms", "qk_norm_type", f"{fam.model_type}'s QK-norm, if any, is an RMSNorm")
    need(not c.sigma_reparam, "sigma_reparam", "transformers has no sigmaReparam linears")
    need(fam.clip_qkv or c.clip_qkv is None, "clip_qkv", f"{fam.model_type} has no q/k/v clamping (olmo and olmoe "
         "do)")
    need(c.norm_cast.value == fam.norm_cast, "norm_cast", f"{fam.model_type} uses {fam.norm_cast!r}")
    need(c.norm_offset == fam.norm_offset, "norm_offset", f"{fam.model_type} uses {fam.norm_offset}")
    need(c.embed_scale == fam.embed_scale, "embed_scale", f"{fam.model_type} uses {fam.embed_scale}")
    if fam.bias == "flag":
        need(c.attention_bias == c.o_proj_bias, "o_proj_bias",
             "transformers' attention_bias puts a bias on q, k, v and o together; set both or neither")
    elif fam.bias == "qkv":
        need(c.attention_bias and not c.o_proj_bias, "o_proj_bias", "qwen2 has biases on q, k, v and none on o")
    elif fam.bias == "use_qkv_bias":
        need(not c.o_proj_bias, "o_proj_bias", f"{fam.model_type} has no bias on the output projection")
    else:
        need(not (c.attention_bias or c.o_proj_bias), "attention_bias", f"{fam.model_type} has no attention biases")
    need(c.attn_softcap is None, "attn_softcap", f"{fam.model_type} in transformers applies no attention softcap")
    need(fam.has_final_softcap or c.final_softcap is None, "final_softcap", f"{fam.model_type} has none")
    qs = c.query_pre_attn_scalar
    need(fam.has_query_scalar or qs is None or qs == c.head_dim, "query_pre_attn_scalar",
         f"{fam.model_type} scales scores by head_dim**-0.5")
    if fam.model_type == "gemma3_text":
        need(c.d_model % c.n_heads == 0, "d_model", "transformers' Gemma 3 requires hidden_size % heads == 0")
    types = c.resolved_layer_types()
    sliding = SLIDING in types
    need(fam.sliding != "none" or not sliding, "sliding_window", f"{fam.model_type} has no sliding layers")
    need(fam.sliding != "all" or not sliding or FULL not in types,
         "layer_types" if c.layer_types is not None else "global_every",
         f"{fam.model_type}'s window applies to every layer or to none")
    if sliding and not fam.per_type_rope:
        need(c.local_rope == (c.rope_theta, c.rope_scaling), "rope_local_theta",
             f"{fam.model_type} uses one RoPE (theta and scaling) for every layer")
    return bad


def hf_config_from_ours(config: ModelConfig, *, dtype: Optional[str] = None) -> Dict[str, Any]:
    """A config.json dict that transformers loads as the same function; ConfigError if not representable."""
    fam = infer_family(config)
    bad = unrepresentable(config, fam)
    if bad:
        raise ConfigError(f"not representable as transformers {fam.model_type}: " + "; ".join(bad))
    c = config
    out: Dict[str, Any] = {
        "architectures": [fam.architecture], "model_type": fam.model_type,
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, fam.d_ff_field: c.d_ff,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim, "max_position_embeddings": c.max_seq_len, fam.eps_field: c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings, fam.act_field: _ACT_TO_HF[c.activation.value],
        "initializer_range": c.init_std, "attention_dropout": 0.0, "use_cache": True,
    }
    if fam.bias == "flag":
        out["attention_bias"] = c.attention_bias
    if dtype:
        out["dtype"] = dtype
    out.update(write_rope(c, per_type=fam.per_type_rope))
    types = list(c.resolved_layer_types())
    if fam.sliding == "layer_types":
        out.update(layer_types=types, sliding_window=c.sliding_window if c.sliding_window is not None else 4096)
    if fam.has_query_scalar:  # Gemma 3
        out.update(query_pre_attn_scalar=_num(c.query_pre_attn_scalar or c.head_dim),
                   final_logit_softcapping=c.final_softcap, attn_logit_softcapping=None,
                   use_bidirectional_attention=False)
    elif fam.sliding == "qwen":
        sliding = SLIDING in types
        first = types.index(SLIDING) if sliding else c.n_layers
        out.update(layer_types=types, use_sliding_window=sliding,
                   sliding_window=c.sliding_window if sliding else None, max_window_layers=first)
    elif fam.sliding == "all":
        out["sliding_window"] = c.sliding_window if SLIDING in types else None
    bad = fam.write(c, out) if fam.write is not None else []
    bad += _read_back_differences(c, out, fam)
    if bad:
        raise ConfigError(f"not representable as transformers {fam.model_type}: " + "; ".join(bad))
    return out


def _read_back_differences(config: ModelConfig, out: Dict[str, Any], fam: Family) -> List[str]:
    """'field=value (why)' for every field that `out`, read back as transformers reads it, does not reproduce:
    the check that covers each family's variant fields (config_variants.py) whatever their combination."""
    try:
        back = config_from_hf(out, source=fam.model_type)[0]
    except CheckpointError as e:
        return [str(e)]
    bad = []
    for name in field_names():
        ours, theirs = getattr(config, name), getattr(back, name)
        if name in ("max_seq_len", "qk_backend", "attn_impl", "sigma_reparam") or ours == theirs:
            continue
        if name in ("layer_types", "global_every", "sliding_window") and \
                config.resolved_layer_types() == back.resolved_layer_types() and \
                (SLIDING not in config.resolved_layer_types() or config.sliding_window == back.sliding_window):
            continue
        value = getattr(ours, "value", ours)
        bad.append(f"{name}={value!r} (transformers {fam.model_type} gives {getattr(theirs, 'value', theirs)!r})")
    return bad


def _num(x: float) -> Any:
    return int(x) if float(x).is_integer() else float(x)
