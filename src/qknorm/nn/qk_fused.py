"""The fused QK path of an attention layer: RMSNorm (per head or over the full width) before rotate-half RoPE in
one op (`qknorm.ops.qk_norm_rope`), or RoPE alone where the layer has no QK-norm.

The layer's numerics (eps, scope, offset, norm cast) are resolved once, at construction: the public op parses
its enums and checks about fifteen properties of its arguments on every call, which is host time a layer whose
shapes are right by construction does not need to spend on every forward. A call only chooses the backend for
the tensors it gets (`pick_backend`: CUDA or not, dtype, tile size) and runs `qk_norm_rope_unchecked`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops import ROPE_ONLY, QKNumerics, pick_backend, qk_norm_rope_unchecked

__all__ = ["QKFused"]


class QKFused(nn.Module):
    """q (B, T, H, D), k (B, T, Hkv, D) -> q (B, H, T, D), k (B, Hkv, T, D); the norms are the layer's, passed in.

    numerics: the layer's RMSNorm numerics (ROPE_ONLY where it has no QK-norm); backend: None, "torch", "triton"."""

    def __init__(self, numerics: QKNumerics, backend: Optional[str]):
        super().__init__()
        self.numerics, self.backend = numerics, backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                q_norm: Optional[nn.Module], k_norm: Optional[nn.Module], start: int = 0):
        # start (the first token's absolute position) is the composed path's; RoPE here comes from cos/sin
        which = pick_backend(q, k, self.backend)
        if q_norm is None:
            return qk_norm_rope_unchecked(q, k, None, None, cos, sin, ROPE_ONLY, which)
        return qk_norm_rope_unchecked(q, k, q_norm.weight, k_norm.weight, cos, sin, self.numerics, which)

    def extra_repr(self) -> str:
        n = self.numerics
        return f"scope={n.scope.value}, eps={n.eps}, offset={n.offset}, norm_cast={n.norm_cast.value}"


def fused_numerics(q_norm: Optional[nn.Module], scope) -> QKNumerics:
    """The numerics of a layer's RMSNorm QK-norm (eps, offset and cast resolved by nn/norm.py), or ROPE_ONLY."""
    if q_norm is None:
        return ROPE_ONLY
    return QKNumerics(eps=float(q_norm.eps), scope=scope, offset=float(q_norm.offset), norm_cast=q_norm.cast)
