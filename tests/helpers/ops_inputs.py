"""Shared by the ops tests: random inputs and an independent float64 HF-style QK-norm + RoPE."""
from __future__ import annotations

import torch


def make_inputs(B, T, H, Hkv, D, dtype, scope, *, wdtype=torch.float32, seed=0, batched_cos=False):
    """q (B, T, H, D), k (B, T, Hkv, D) as slices of one fused projection (non-contiguous), weights, cos/sin."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, (H + 2 * Hkv) * D, generator=g).mul_(2.0).to(dtype)  # (B, T, (H+2Hkv)*D)
    q = qkv[..., : H * D].view(B, T, H, D)  # (B, T, H, D), token stride (H+2Hkv)*D
    k = qkv[..., H * D : (H + Hkv) * D].view(B, T, Hkv, D)  # (B, T, Hkv, D)
    if scope == "none":
        qw = kw = None
    else:
        nq, nk = (D, D) if scope == "head" else (H * D, Hkv * D)
        qw = (torch.rand(nq, generator=g) + 0.5).to(wdtype)
        kw = (torch.rand(nk, generator=g) + 0.5).to(wdtype)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))  # (D/2,)
    pos = torch.arange(T, dtype=torch.float64)
    if batched_cos:  # (B, T, D): per-sequence positions
        pos = pos[None] + torch.arange(B, dtype=torch.float64)[:, None] * 3
    f = pos[..., None] * inv  # (..., T, D/2)
    emb = torch.cat((f, f), -1)  # (..., T, D)
    return q, k, qw, kw, emb.cos().float(), emb.sin().float()


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_style_f64(q, k, qw, kw, cos, sin, *, eps=1e-6, scope="head", offset=0.0, norm_cast="fp32",
                 round_to=None):
    """Written like the HF modules, in float64: norm module (per head on (B, T, H, D), or OLMo 2 style on the
    flat (B, T, H*D) projection), view/transpose to (B, H, T, D), then apply_rotary_pos_emb.
    norm_cast "input" rounds the normalized x to `round_to` (the input dtype) before the weight."""

    def norm(x, w):
        B, T, n, D = x.shape
        h = x.double()
        if w is None or scope == "none":
            return h
        if scope == "full":
            h = h.reshape(B, T, n * D)  # (B, T, n*D), OLMo 2 q_norm over the projection
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        if norm_cast == "input" and round_to is not None:
            h = h.to(round_to).double()
        h = (offset + w.double()) * h
        return h.view(B, T, n, D)

    c = cos.double().unsqueeze(-3)  # (1, T, D) or (B, 1, T, D): broadcast over heads of (B, H, T, D)
    s = sin.double().unsqueeze(-3)
    qh, kh = norm(q, qw).transpose(1, 2), norm(k, kw).transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D)
    return qh * c + _rotate_half(qh) * s, kh * c + _rotate_half(kh) * s
