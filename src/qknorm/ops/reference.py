"""Plain-PyTorch QK-RMSNorm + RoPE: the reference every kernel is checked against, and the CPU path.

For each of q (B, T, H, D) and k (B, T, Hkv, D), per row x of length N (N = D for scope "head",
N = heads * D for scope "full", the OLMo 2 statistic over a token's whole projection width):

    r   = rsqrt(mean(x^2) + eps)          # in fp32 (or float64 when x is float64)
    xh  = x * r
    y   = (offset + w) * xh               # norm_cast "fp32":  OLMo 2 / Gemma 3 (offset=1)
    y   = (offset + w) * xh.to(x.dtype)   # norm_cast "input": Llama / Qwen3 (rounded before the weight)
    out = y * cos + rotate_half(y) * sin  # rotate_half(y) = cat(-y2, y1), HF convention
    out -> (B, heads, T, D), cast once to x.dtype

Scope "none" (or weights None) skips the norm: RoPE and the transpose only. Gradients come from autograd,
which treats the "input" rounding as identity for x (straight through), as autograd of the HF code does.
The arithmetic runs in float32, or float64 when given float64 tensors, so the same code is the float64
reference in tests. It writes nothing in place.
"""

from __future__ import annotations

import torch

__all__ = ["qk_norm_rope_ref", "rms_norm_rope_ref"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm_rope_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    eps: float = 1e-6,
    scope: str = "head",
    offset: float = 0.0,
    norm_cast: str = "fp32",
) -> torch.Tensor:
    """One of q or k: x (B, T, n, D) -> (B, n, T, D) in x.dtype. cos/sin are (T, D) or (B, T, D)."""
    B, T, n, D = x.shape
    cd = _compute_dtype(x.dtype)
    xf = x.to(cd)  # (B, T, n, D); a no-op for fp32 inputs
    if weight is not None and scope != "none":
        if scope == "head":
            ms = xf.pow(2).mean(-1, keepdim=True)  # (B, T, n, 1)
            g = weight.to(cd) + offset  # (D,)
        else:  # "full": one statistic over the token's n*D values
            ms = xf.pow(2).mean((-2, -1), keepdim=True)  # (B, T, 1, 1)
            g = (weight.to(cd) + offset).view(n, D)  # (n, D)
        xh = xf * torch.rsqrt(ms + eps)
        if norm_cast == "input":
            xh = xh.to(x.dtype).to(cd)  # Llama/Qwen3: round before the weight
        y = xh * g  # (B, T, n, D)
    else:
        y = xf
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
    scope: str = "head",
    offset: float = 0.0,
    norm_cast: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, T, H, D), k (B, T, Hkv, D) -> q (B, H, T, D), k (B, Hkv, T, D), contiguous, input dtype."""
    kw = dict(eps=eps, scope=scope, offset=offset, norm_cast=norm_cast)
    return (
        rms_norm_rope_ref(q, q_weight, cos, sin, **kw),
        rms_norm_rope_ref(k, k_weight, cos, sin, **kw),
    )
