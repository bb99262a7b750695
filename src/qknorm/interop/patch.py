"""`patch_hf(model)`: our fused QK-RMSNorm + RoPE op inside transformers' Qwen3, OLMo 2 and Gemma 3 attention.

For people who train with transformers: each attention module's forward is replaced (on the instance; the
class is untouched) by one that projects q, k, v, calls `qknorm.ops.qk_norm_rope` with the family's numerics
(scope, cast order, Gemma's 1 + w offset; the module's own q_norm/k_norm weights and eps, so gradients reach
them), updates the KV cache, and hands q, k, v to transformers' attention interface (SDPA, eager, flash...)
exactly as the original forward does. Same function, same parameters, same state dict: only the two
norm + RoPE passes become one op (on CUDA the Triton kernel, elsewhere the PyTorch reference).

    model = qknorm.patch_hf(AutoModelForCausalLM.from_pretrained(...))   # returns the same model object
    qknorm.interop.unpatch_hf(model)                                     # back to transformers' forward
"""
from __future__ import annotations

import sys
import types
from typing import Any, Optional

from torch import nn

from ..errors import ConfigError
from ..ops import qk_norm_rope
from .hf_config import FAMILIES

__all__ = ["patch_hf", "unpatch_hf", "PATCHABLE"]

# the families whose attention is an RMSNorm before rotate-half RoPE on every layer (no variant fields)
PATCHABLE = tuple(t for t, f in FAMILIES.items() if f.qk_norm != "none" and f.read is None)  # olmo2/3, qwen3, gemma3


def _is_attention(m: nn.Module) -> bool:
    return all(hasattr(m, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "config"))


def _norm_eps(norm: nn.Module) -> float:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise ConfigError(f"{type(norm).__name__} has neither variance_epsilon nor eps; cannot read its epsilon")
    return float(eps)


def _forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    """Drop-in for Qwen3Attention/Olmo2Attention/Gemma3Attention.forward (transformers 5.x)."""
    spec = self._qknorm_spec
    if cache is None:
        cache = kwargs.pop("past_key_values", None)
    B, T = hidden_states.shape[:2]
    D = self.head_dim
    q = self.q_proj(hidden_states).view(B, T, -1, D)  # (B, T, H, D)
    k = self.k_proj(hidden_states).view(B, T, -1, D)  # (B, T, Hkv, D)
    v = self.v_proj(hidden_states).view(B, T, -1, D).transpose(1, 2)  # (B, Hkv, T, D)
    cos, sin = position_embeddings  # (B or 1, T, D)
    q, k = qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, cos, sin, eps=spec["eps"],
                        scope=spec["scope"], offset=spec["offset"], norm_cast=spec["norm_cast"],
                        backend=spec["backend"])  # (B, H, T, D), (B, Hkv, T, D)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx, kwargs=kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, spec["eager"])
    extra = {"sliding_window": self.sliding_window} if hasattr(self, "sliding_window") else {}
    out, weights = attention(self, q, k, v, attention_mask, scaling=self.scaling,
                             dropout=self.attention_dropout if self.training else 0.0, **extra, **kwargs)
    out = out.reshape(B, T, -1).contiguous()  # (B, T, H*D)
    return self.o_proj(out), weights


def patch_hf(model: Any, *, backend: Optional[str] = None) -> Any:
    """Swap `qknorm.ops.qk_norm_rope` into every attention module of an HF Qwen3/OLMo 2/Gemma 3 model.

    backend: None (Triton on CUDA when available, else the PyTorch reference), "torch" or "triton".
    Returns the model (patched in place). Raises ConfigError for a model without a QK-norm family's attention.
    Idempotent; `unpatch_hf` restores the original forward.
    """
    if backend not in (None, "torch", "triton"):
        raise ConfigError(f"backend={backend!r} is not allowed; choose one of: None, torch, triton")
    found = 0
    for module in model.modules():
        if not _is_attention(module):
            continue
        model_type = getattr(module.config, "model_type", None)
        if model_type not in PATCHABLE:
            raise ConfigError(f"patch_hf supports {', '.join(PATCHABLE)} attention; {type(module).__name__} has "
                              f"model_type {model_type!r}")
        fam = FAMILIES[model_type]
        module._qknorm_spec = dict(
            scope=fam.qk_norm, norm_cast=fam.norm_cast, offset=fam.norm_offset, eps=_norm_eps(module.q_norm),
            backend=backend, eager=sys.modules[type(module).__module__].eager_attention_forward)
        module.forward = types.MethodType(_forward, module)
        found += 1
    if not found:
        raise ConfigError(f"{type(model).__name__} has no attention module with q_norm/k_norm to patch "
                          f"(supported: {', '.join(PATCHABLE)})")
    return model


def unpatch_hf(model: Any) -> Any:
    """Undo `patch_hf`: attention modules use their class's forward again."""
    for module in model.modules():
        if "_qknorm_spec" in module.__dict__:
            del module.__dict__["forward"]
            del module._qknorm_spec
    return model
