"""Plain-PyTorch QK-RMSNorm + RoPE: the reference every kernel is checked against, and the CPU path.

For each of q (B, T, H, D) and k (B, T, Hkv, D), per row x of length N (N = D for scope "head",
N = heads * D for scope "full", the OLMo 2 statistic over a token's whole projection width):

    y   = rms_normalize(x, w, eps, offset, norm_cast)   # ops/rms.py: the numerics the block norms share
    out = y * cos + rotate_half(y) * sin  # rotate_half(y) = cat(-y2, y1), HF convention
    out -> (B, heads, T, D), cast once to x.dtype

Scope "none" (or weights None) skips the norm: RoPE and the transpose only. Gradients come from autograd,
which treats the "input" rounding as identity for x (straight through), as autograd of the HF code does.
The arithmetic runs in float32, or float64 when given float64 tensors, so the same code is the float64
reference in tests. It writes nothing in place. The `*_unchecked` forms take the enums resolved (the op's
per-call path); the public forms parse scope and norm_cast first.
"""

from __future__ import annotations

import torch

from ..config import NormCast, QKNormScope
from .rms import compute_dtype, rms_normalize

__all__ = ["qk_norm_rope_ref", "rms_norm_rope_ref",
           "qk_norm_rope_ref_unchecked", "rms_norm_rope_unchecked"]


def rms_norm_rope_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float = 1e-6,
    scope: QKNormScope | str = QKNormScope.HEAD,
    offset: float = 0.0,
    norm_cast: NormCast | str = NormCast.FP32,
) -> torch.Tensor:
    """One of q or k: x (B, T, n, D) -> (B, n, T, D) in x.dtype. cos/sin are (T, D) or (B, T, D)."""
    return rms_norm_rope_unchecked(x, weight, cos, sin, eps, QKNormScope.parse("scope", scope), offset,
                                   NormCast.parse("norm_cast", norm_cast))


def rms_norm_rope_unchecked(x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                            eps: float, scope: QKNormScope, offset: float, norm_cast: NormCast) -> torch.Tensor:
    """`rms_norm_rope_ref` with its enums resolved (no parsing: the per-call path of an attention layer)."""
    B, T, n, D = x.shape
    cd = compute_dtype(x.dtype)
    if weight is not None and scope is not QKNormScope.NONE:
        # scope head: a statistic per (token, head) over D; full: one over the token's n*D values (OLMo 2)
        dims, gain = ((-1,), weight) if scope is QKNormScope.HEAD else ((-2, -1), weight.view(n, D))
        y = rms_normalize(x, gain, eps=eps, offset=offset, cast=norm_cast, dims=dims)  # (B, T, n, D)
    else:
        y = x.to(cd)
    y1, y2 = y.transpose(1, 2).chunk(2, dim=-1)  # (B, n, T, D/2) each, strided views
    c1, c2 = cos.to(cd).unsqueeze(-3).chunk(2, dim=-1)  # (1, T, D/2) or (B, 1, T, D/2)
    s1, s2 = sin.to(cd).unsqueeze(-3).chunk(2, dim=-1)
    # y*cos + rotate_half(y)*sin on the halves; cat writes a fresh (B, n, T, D) tensor
    out = torch.cat((y1 * c1 - y2 * s1, y2 * c2 + y1 * s2), dim=-1)
    return out.to(x.dtype).contiguous()  # no-ops for fp32 (cat's output is dense in this layout)


def qk_norm_rope_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float = 1e-6,
    scope: QKNormScope | str = QKNormScope.HEAD,
    offset: float = 0.0,
    norm_cast: NormCast | str = NormCast.FP32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, T, H, D), k (B, T, Hkv, D) -> q (B, H, T, D), k (B, Hkv, T, D), contiguous, input dtype."""
    return qk_norm_rope_ref_unchecked(q, k, q_weight, k_weight, cos, sin, eps, QKNormScope.parse("scope", scope),
                                      offset, NormCast.parse("norm_cast", norm_cast))


def qk_norm_rope_ref_unchecked(q, k, q_weight, k_weight, cos, sin, eps: float, scope: QKNormScope, offset: float,
                               norm_cast: NormCast) -> tuple[torch.Tensor, torch.Tensor]:
    """`qk_norm_rope_ref` with its enums resolved (no parsing)."""
    return (
        rms_norm_rope_unchecked(q, q_weight, cos, sin, eps, scope, offset, norm_cast),
        rms_norm_rope_unchecked(k, k_weight, cos, sin, eps, scope, offset, norm_cast),
    )
