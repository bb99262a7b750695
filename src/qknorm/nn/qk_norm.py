"""The QK-norm variants (`qk_norm_type`): what normalizes q and k before RoPE, per head or over the full width.

For q (B, T, H, D) and k (B, T, Hkv, D), each statistic is taken over a head's D values (scope "head") or over
a token's whole projection width, H*D or Hkv*D values (scope "full", OLMo 2):

  rms        x / rms(x) * g                     RMSNorm with a learned gain (nn/norm.py); fused with RoPE in
                                                ops.qk_norm_rope (the Triton kernel serves this type only)
  layernorm  (x - mean(x)) / std(x) * g         learned gain, no bias (below); fp32, cast once
  l2         x / |x|, and q times t_h           unit L2 norm; a learned temperature t_h per query head
                                                multiplies the logits: logit = t_h * q_hat . k_hat

Gains (qk_norm_gain): "shared" as above; "per_head" (n, D), each head its own gain over the per-head statistic
(Cohere's LayerNorm with a (heads, head_dim) weight, StableLM's LayerNorm per head); "none", no gain (Llama 4's
weightless RMSNorm, `QKWeightlessRMSNorm`). Anything but the rms type with shared gains before RoPE is composed
with RoPE in PyTorch (nn/qk_path.py) rather than fused.

The layernorm and l2 types are computed here in PyTorch; RoPE then runs alone (ops.qk_norm_rope without
weights). LayerNorm has no bias, as in ViT-22B's QK-LayerNorm (Dehghani et al. 2023, which drops LayerNorm
biases): a bias on q or k is not normalized, so it could grow the logits without bound (the point of the norm
is |logit| <= scale * |g_q| * |g_k|), and without it the layernorm variant has exactly the parameters of the
rms variant, so a comparison of the two changes one thing: the mean-centring.

L2 with a learned temperature (Henry et al. 2020, arXiv 2010.04245). |q_hat| <= 1 and |k_hat| <= 1 over the
normalized span, so every logit of head h is bounded by t_h (Cauchy-Schwarz) for either scope. The attention
then scales scores by 1 (`qk_logit_scale`): the temperature is the whole multiplier, folded into q before RoPE
(a per-head scalar commutes with the rotation). Initial temperature: the value that makes the initial logits
those of the rms type with unit gains, i.e. of a head_dim**-0.5-scaled (query_pre_attn_scalar**-0.5) q.k of
unit-RMS vectors:
  scope head:  t0 = query_scale * D                   (= sqrt(D) by default: 8 for D = 64)
  scope full:  t0 = query_scale * D * sqrt(H * Hkv)   (unit RMS over the width gives each head |q_h| ~ sqrt(D))
so the l2 and rms variants start as the same function and differ only in how their scale is learned (one
temperature per head vs a gain per dimension). Henry et al. initialise their scalar to log2(L^2 - L) for
training length L (11.98 at L = 64, 15.99 at L = 256): that ties the scale to the sequence length; ours ties
it to the logits the other variants start from, which is what a comparison between them needs.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, QKNormGain, QKNormScope, QKNormType, layer_has_qk_norm
from .norm import RMSNorm

__all__ = ["QKLayerNorm", "QKL2Norm", "QKWeightlessRMSNorm", "QKFullRMSNorm", "build_qk_norms", "qk_logit_scale",
           "l2_initial_temperature"]


class QKLayerNorm(nn.Module):
    """LayerNorm of q or k (B, T, n, D) over D (scope head, gain (D,)) or over n*D (scope full, gain (n*D,)).

    scale = offset + weight (offset 1.0 with Gemma's zero-initialised gains), computed in fp32, cast once.
    `dim` a pair (n, D): per-head gains (Cohere, StableLM), the statistic still per head; None: no gain."""

    def __init__(self, dim, *, full: bool, eps: float, offset: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.full, self.eps, self.offset = full, float(eps), float(offset)
        init = torch.zeros if offset else torch.ones
        self.weight = None if dim is None else nn.Parameter(init(dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.zeros_(self.weight) if self.offset else nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n, D) -> (B, T, n, D) in x's dtype
        shape = tuple(x.shape[-2:]) if self.full else (x.shape[-1],)
        if self.weight is None:
            return F.layer_norm(x.float(), shape, None, None, self.eps).to(x.dtype)
        if self.weight.dim() == 2:  # per-head gains (n, D): normalize per head, then scale each head
            y = F.layer_norm(x.float(), shape, None, None, self.eps)
            return ((self.weight.float() + self.offset) * y).to(x.dtype)  # w * y as Cohere orders it
        gain = (self.weight.float() + self.offset).view(shape)
        return F.layer_norm(x.float(), shape, gain, None, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        dim = "none" if self.weight is None else tuple(self.weight.shape)
        return f"gain={dim}, full={self.full}, eps={self.eps}, offset={self.offset}, bias=False"


class QKFullRMSNorm(RMSNorm):
    """RMSNorm of q or k (B, T, n, D) over a token's whole width n*D, gain (n*D,) (scope full, OLMo 2's), where a
    layer runs it outside the fused op (nn/qk_path.py: OLMoE's clip_qkv after it, or a variant RoPE)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n, D) -> (B, T, n, D) in x's dtype
        return super().forward(x.flatten(-2)).view(x.shape)


class QKWeightlessRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) over D (or n*D for scope full) of q or k (B, T, n, D), fp32, cast once: no gain
    (Llama 4's QK "L2Norm")."""

    def __init__(self, *, full: bool, eps: float):
        super().__init__()
        self.full, self.eps = full, float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n, D) -> (B, T, n, D) in x's dtype
        xf = x.float()
        dims = (-2, -1) if self.full else (-1,)
        return (xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"full={self.full}, eps={self.eps}, gain=none"


class QKL2Norm(nn.Module):
    """x / |x| over D (scope head) or over n*D (scope full) of q or k (B, T, n, D), in fp32, cast once.

    With `n_heads` (the query side) it holds the per-head temperature (n_heads,) and multiplies head h by t_h."""

    def __init__(self, *, full: bool, eps: float, n_heads: Optional[int] = None, init_temperature: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        self.full, self.eps, self.init_temperature = full, float(eps), float(init_temperature)
        self.temperature = None
        if n_heads is not None:
            self.temperature = nn.Parameter(torch.full((n_heads,), self.init_temperature, device=device,
                                                       dtype=dtype))

    def reset_parameters(self) -> None:
        if self.temperature is not None:
            nn.init.constant_(self.temperature, self.init_temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n, D) -> (B, T, n, D) in x's dtype
        dims = (-2, -1) if self.full else (-1,)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).sum(dims, keepdim=True) + self.eps)  # |y| < 1 over the span
        if self.temperature is not None:
            y = y * self.temperature.float()[:, None]  # (n, 1): head h times t_h
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        t = "none" if self.temperature is None else f"per head, init {self.init_temperature:.4g}"
        return f"full={self.full}, eps={self.eps}, temperature={t}"


def l2_initial_temperature(config: ModelConfig) -> float:
    """t0 that makes the l2 type's initial logits those of unit-RMS q and k scaled by query_scale (docstring)."""
    c = config
    heads = c.n_heads * c.n_kv_heads if c.qk_norm is QKNormScope.FULL else 1
    return c.query_scale * c.head_dim * math.sqrt(heads)


def qk_logit_scale(config: ModelConfig) -> float:
    """The multiplier on q.k scores: 1 for the l2 type (its temperature is in q), else query_scale."""
    if config.qk_norm is not QKNormScope.NONE and config.qk_norm_type is QKNormType.L2:
        return 1.0
    return config.query_scale


def build_qk_norms(config: ModelConfig, layer_idx: int = 0, *, device=None,
                   dtype=None) -> Tuple[Optional[nn.Module], Optional[nn.Module]]:
    """(q_norm, k_norm) of layer `layer_idx` for the config's QK-norm scope, type and gain; (None, None) where
    the layer has no QK-norm."""
    c = config
    if not layer_has_qk_norm(c, layer_idx):
        return None, None
    full = c.qk_norm is QKNormScope.FULL
    q_dim, k_dim = c.head_dim * (c.n_heads if full else 1), c.head_dim * (c.n_kv_heads if full else 1)
    if c.qk_norm_gain is QKNormGain.PER_HEAD:
        q_dim, k_dim = (c.n_heads, c.head_dim), (c.n_kv_heads, c.head_dim)
    kw = dict(device=device, dtype=dtype)
    if c.qk_norm_gain is QKNormGain.NONE and c.qk_norm_type is QKNormType.RMS:
        return QKWeightlessRMSNorm(full=full, eps=c.norm_eps), QKWeightlessRMSNorm(full=full, eps=c.norm_eps)
    if c.qk_norm_gain is QKNormGain.NONE:
        q_dim = k_dim = None
    if c.qk_norm_type is QKNormType.L2:
        return (QKL2Norm(full=full, eps=c.norm_eps, n_heads=c.n_heads, init_temperature=l2_initial_temperature(c),
                         **kw), QKL2Norm(full=full, eps=c.norm_eps, **kw))
    if c.qk_norm_type is QKNormType.LAYERNORM:
        return (QKLayerNorm(q_dim, full=full, eps=c.norm_eps, offset=c.norm_offset, **kw),
                QKLayerNorm(k_dim, full=full, eps=c.norm_eps, offset=c.norm_offset, **kw))
    nkw = dict(eps=c.norm_eps, offset=c.norm_offset, cast=c.norm_cast, **kw)
    norm = QKFullRMSNorm if full and c.qk_norm_gain is QKNormGain.SHARED else RMSNorm
    return norm(q_dim, **nkw), norm(k_dim, **nkw)
