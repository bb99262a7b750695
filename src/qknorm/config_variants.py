"""The QK-norm and RoPE variants of the open families, as ModelConfig fields (the choices and their checks).

Every family that normalizes q and k maps onto the same few fields (config.py declares them; this module holds
their choices and validation, so that config.py stays one concept a screen):

  qk_norm            none | head | full     span of the statistic (per head over D; a token's whole width)
  qk_norm_type       rms | layernorm | l2   what is computed over it (nn/qk_norm.py)
  qk_norm_gain       shared                 one gain vector per scope: (D,) head, (H*D,) full  (Qwen3, OLMo 2)
                     per_head               a (D,) gain for each head, (H, D)                  (Cohere, StableLM)
                     none                   weightless                                         (Llama 4)
  qk_norm_after_rope false | true           normalize the rotated q/k instead (HunYuan, Llama 4)
  qk_norm_layers     all | rope             rope: only layers that apply RoPE carry it         (Llama 4)
  nope_layers        layer indices          layers that apply no RoPE   (Llama 4 no_rope_layers; EXAONE 4 global)
  rope_interleaved   false | true           rotate adjacent pairs (x0, x1), (x2, x3).. instead of halves
                                            (Cohere, Llama 4's complex form); false = rotate-half (Llama)
  rope_fraction      (0, 1]                 rotate the first int(D * f) dims only (StableLM partial_rotary_factor)
  nope_attn_scale    None | a > 0           Llama 4 temperature tuning on NoPE layers: q at position p is
  nope_floor_scale   F > 0                  multiplied by log1p(floor((p + 1) / F)) * a + 1
  attention_chunk    None | C               "chunked_attention" layers: key kept iff k <= q and q // C == k // C
  clip_qkv           None | c > 0           q, k, v clamped to [-c, c] after the projections, after a QK-norm
                                            that precedes RoPE (OLMoE's order), before RoPE (OLMo 1, OLMoE)
  layernorm_weight   true | false           false: block LayerNorms without gain or bias (OLMo 1)

Llama 4's "L2Norm" is x * rsqrt(mean(x^2) + eps): an RMSNorm without gain (qk_norm_type rms, qk_norm_gain none),
not the unit-L2 norm with a learned temperature of qk_norm_type l2 (Henry et al. 2020).
"""
from __future__ import annotations

from typing import Any, Tuple

from .choice import Choice
from .errors import ConfigError

ModelConfig = Any  # config.ModelConfig, which imports this module (the functions read its fields)

__all__ = ["QKNormScope", "QKNormType", "QKNormGain", "QKNormLayers", "validate_variants", "layer_has_rope",
           "layer_has_qk_norm", "fused_layer", "fused_kernel_serves", "unfused_reason", "rotary_dim", "clip_between"]


class QKNormScope(Choice):
    """Where the QK-norm statistic is taken."""

    NONE = "none"  # no QK-norm (Llama)
    HEAD = "head"  # per head over head_dim (Qwen3, Gemma 3)
    FULL = "full"  # over the whole projection width n_heads*head_dim / n_kv_heads*head_dim (OLMo 2)


class QKNormType(Choice):
    """What the QK-norm computes over its scope (nn/qk_norm.py): see each value."""

    RMS = "rms"  # RMSNorm with a learned gain (OLMo 2, Gemma 3, Qwen3)
    LAYERNORM = "layernorm"  # mean-centred, unit variance, learned gain, no bias (Dehghani et al. 2023)
    L2 = "l2"  # unit L2 norm, logits scaled by a learned per-head temperature (Henry et al. 2020)


class QKNormGain(Choice):
    """The QK-norm's learned gain."""

    SHARED = "shared"  # (D,) for scope head, shared by the heads; (H*D,) for scope full
    PER_HEAD = "per_head"  # (H, D): each head its own gain (Cohere, StableLM per-head LayerNorms); scope head
    NONE = "none"  # no gain (Llama 4's weightless norm)


class QKNormLayers(Choice):
    """Which layers carry the QK-norm."""

    ALL = "all"
    ROPE = "rope"  # only those that apply RoPE (Llama 4: its NoPE layers have none)


def validate_variants(c: ModelConfig) -> None:
    """ConfigError naming the field for every variant setting that is out of range or contradicts another."""
    for name in ("qk_norm_after_rope", "rope_interleaved", "layernorm_bias", "layernorm_weight"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(f"{name}={getattr(c, name)!r} must be true or false")
    bad = [i for i in c.nope_layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < c.n_layers]
    if bad:
        raise ConfigError(f"nope_layers entry {bad[0]!r} is not a layer index in 0..{c.n_layers - 1}")
    if list(c.nope_layers) != sorted(set(c.nope_layers)):
        raise ConfigError(f"nope_layers={list(c.nope_layers)!r} must be increasing, each layer once")
    if not c.layernorm_weight and c.norm_type.value != "layernorm":
        raise ConfigError(f"layernorm_weight=false applies to norm_type='layernorm' only, not "
                          f"{c.norm_type.value!r}")
    if not c.layernorm_weight and c.layernorm_bias:
        raise ConfigError("layernorm_weight=false needs layernorm_bias=false (a non-parametric LayerNorm, OLMo 1's, "
                          "has neither gain nor bias)")
    f = c.rope_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise ConfigError(f"rope_fraction={f!r} must be a number in (0, 1]")
    rd = rotary_dim(c)
    if rd < 2 or rd % 2:
        raise ConfigError(f"rope_fraction={f} rotates int(head_dim * f) = {rd} dims of head_dim={c.head_dim}; "
                          "that must be even and at least 2")
    for name in ("nope_floor_scale", "logit_scale"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"{name}={v!r} must be a positive number")
    if c.nope_attn_scale is not None:
        v = c.nope_attn_scale
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"nope_attn_scale={v!r} must be a positive number or None (off)")
    if c.attention_chunk is not None and (isinstance(c.attention_chunk, bool) or
                                          not isinstance(c.attention_chunk, int) or c.attention_chunk < 1):
        raise ConfigError(f"attention_chunk={c.attention_chunk!r} must be an integer >= 1")
    off = c.qk_norm is QKNormScope.NONE
    changed = [n for n, default in (("qk_norm_gain", QKNormGain.SHARED), ("qk_norm_layers", QKNormLayers.ALL),
                                    ("qk_norm_after_rope", False)) if getattr(c, n) != default]
    if off and changed:
        raise ConfigError(f"{changed[0]} is set but qk_norm is 'none'; choose qk_norm 'head' or 'full'")
    if c.qk_norm_gain is QKNormGain.PER_HEAD and c.qk_norm is QKNormScope.FULL:
        raise ConfigError("qk_norm_gain='per_head' needs qk_norm='head' (scope full has a gain per dimension of "
                          "the whole width already)")
    if c.qk_norm_type is QKNormType.L2 and c.qk_norm_gain is not QKNormGain.SHARED:
        raise ConfigError(f"qk_norm_gain={c.qk_norm_gain.value!r} does not apply to qk_norm_type='l2' (no gains: "
                          "one learned temperature per head); use qk_norm_type 'rms' for a weightless RMSNorm")
    if c.qk_backend == "triton" and not fused_kernel_serves(c):
        raise ConfigError("qk_backend='triton' is the fused RMSNorm-then-RoPE kernel (rotate-half, whole head, "
                          f"RMSNorm with shared gains before RoPE); {unfused_reason(c)}: use qk_backend None or "
                          "'torch'")


def rotary_dim(c: ModelConfig) -> int:
    """How many leading dims of a head RoPE rotates: int(head_dim * rope_fraction), as transformers rounds."""
    return int(c.head_dim * c.rope_fraction)


def layer_has_rope(c: ModelConfig, i: int) -> bool:
    return i not in c.nope_layers


def layer_has_qk_norm(c: ModelConfig, i: int) -> bool:
    if c.qk_norm is QKNormScope.NONE:
        return False
    return c.qk_norm_layers is QKNormLayers.ALL or layer_has_rope(c, i)


def unfused_reason(c: ModelConfig) -> str:
    """Why the fused kernel cannot serve the config's layers ('' when it can)."""
    for cond, why in ((c.qk_norm_type is not QKNormType.RMS, f"qk_norm_type={c.qk_norm_type.value!r}"),
                      (c.qk_norm_gain is not QKNormGain.SHARED, f"qk_norm_gain={c.qk_norm_gain.value!r}"),
                      (c.qk_norm_after_rope, "qk_norm_after_rope=true"),
                      (c.rope_interleaved, "rope_interleaved=true"),
                      (c.rope_fraction != 1, f"rope_fraction={c.rope_fraction}"),
                      (bool(c.nope_layers), f"nope_layers={list(c.nope_layers)}"),
                      (c.nope_attn_scale is not None, "nope_attn_scale"),
                      (c.clip_qkv is not None and _norm_before_rope(c), "clip_qkv with a QK-norm before RoPE")):
        if cond:
            return why + " is computed in PyTorch"
    return ""


def fused_kernel_serves(c: ModelConfig) -> bool:
    """Whether every layer's QK-norm + RoPE is the fused op's RMSNorm-then-rotate-half (ops.qk_norm_rope)."""
    return not unfused_reason(c)


def fused_layer(c: ModelConfig, i: int) -> bool:
    """Whether layer i runs the fused op: its RMSNorm (shared gains) before a whole-head rotate-half RoPE, or
    no norm and that RoPE; anything else is composed in PyTorch (nn/qk_path.py)."""
    if not layer_has_rope(c, i) or c.rope_interleaved or c.rope_fraction != 1:
        return False
    if not layer_has_qk_norm(c, i):
        return True
    if clip_between(c, i):
        return False  # the clamp goes between the norm and RoPE (OLMoE)
    return c.qk_norm_type is QKNormType.RMS and c.qk_norm_gain is QKNormGain.SHARED and not c.qk_norm_after_rope


def _norm_before_rope(c: ModelConfig) -> bool:
    return c.qk_norm is not QKNormScope.NONE and not c.qk_norm_after_rope


def clip_between(c: ModelConfig, i: int) -> bool:
    """Whether layer i clamps q and k between its QK-norm and RoPE (clip_qkv with a norm before RoPE; OLMoE),
    rather than straight after the projections."""
    return c.clip_qkv is not None and layer_has_qk_norm(c, i) and not c.qk_norm_after_rope


def nope_layer_tuple(value) -> Tuple[int, ...]:
    return tuple(value) if value is not None else ()
