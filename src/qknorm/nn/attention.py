"""Causal multi-head attention with optional QK-norm (before RoPE), GQA/MQA, sliding windows and softcapping.

  q = q_proj(x) -> (B, T, H, D)      k = k_proj(x) -> (B, T, Hkv, D)      v = v_proj(x) -> (B, Hkv, T, D)
  q, k = qk_norm_rope(q, k, ...)     RMSNorm per head (scope "head") or over the whole projection width
                                     (scope "full", OLMo 2), then RoPE, in one fused op -> (B, H|Hkv, T, D)
  o = softmax(scale * q k^T [softcap] [causal/sliding mask]) v  -> o_proj

Two paths compute the same function: SDPA (default; flash/efficient kernels) and eager (explicit scores; needed
for attention softcapping). When `record_stats` is set, the layer also stores diagnostics of its last call in
`self.stats`: the exact max attention logit over allowed (query, key) pairs, the cheap bound
scale * max|q| * max|k| that holds for any attention kernel, and the RMS of q and k after QK-norm and RoPE.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SLIDING, AttnImpl, ModelConfig, QKNormScope
from ..ops import qk_norm_rope
from .norm import RMSNorm


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, *, device=None, dtype=None):
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.scale = c.query_scale
        self.softcap = c.attn_softcap
        self.window = c.sliding_window if c.resolved_layer_types()[layer_idx] == SLIDING else None
        self.eager = c.attn_impl is AttnImpl.EAGER or c.attn_softcap is not None
        self.scope, self.backend = c.qk_norm, c.qk_backend
        kw = dict(bias=c.attention_bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, **kw)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, **kw)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, **kw)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=c.o_proj_bias, device=device, dtype=dtype)
        self.q_norm = self.k_norm = None
        if c.qk_norm is not QKNormScope.NONE:
            full = c.qk_norm is QKNormScope.FULL
            nkw = dict(eps=c.norm_eps, offset=c.norm_offset, cast=c.norm_cast, device=device, dtype=dtype)
            self.q_norm = RMSNorm(c.head_dim * (c.n_heads if full else 1), **nkw)
            self.k_norm = RMSNorm(c.head_dim * (c.n_kv_heads if full else 1), **nkw)
        self.record_stats = False
        self.stats: Dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = self._qk_norm_rope(q, k, cos, sin)  # (B, H, T, D), (B, Hkv, T, D)
        if self.record_stats:
            self.stats = attention_stats(q, k, self.scale, self.window)
        o = self._attend_eager(q, k, v) if self.eager else self._attend_sdpa(q, k, v)  # (B, H, T, D)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _qk_norm_rope(self, q, k, cos, sin):
        qn, kn = self.q_norm, self.k_norm
        if qn is None:
            return qk_norm_rope(q, k, None, None, cos, sin, scope="none", backend=self.backend)
        return qk_norm_rope(q, k, qn.weight, kn.weight, cos, sin, eps=qn.eps, scope=self.scope,
                            offset=qn.offset, norm_cast=qn.cast, backend=self.backend)

    def _attend_sdpa(self, q, k, v):
        gqa = self.n_heads != self.n_kv_heads
        if self.window is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=gqa)
        mask = causal_mask(q.shape[2], self.window, q.device)  # (T, T) bool, True = attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _attend_eager(self, q, k, v):
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, T, D)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale  # (B, H, T, T)
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        mask = causal_mask(q.shape[2], self.window, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)

    def extra_repr(self) -> str:
        return f"qk_norm={self.scope.value}, window={self.window}, scale={self.scale:.4g}, eager={self.eager}"


def causal_mask(T: int, window: Optional[int], device) -> torch.Tensor:
    """(T, T) bool, True where query q may attend key k: k <= q, and q - W < k with a window W."""
    i = torch.arange(T, device=device)
    diff = i[:, None] - i[None, :]  # q - k
    keep = diff >= 0
    if window is not None:
        keep = keep & (diff < window)
    return keep


@torch.no_grad()
def attention_stats(q: torch.Tensor, k: torch.Tensor, scale: float, window: Optional[int]) -> Dict[str, torch.Tensor]:
    """Diagnostics of one attention call (q (B, H, T, D), k (B, Hkv, T, D), after QK-norm and RoPE).

    max_logit: exact max over allowed pairs of scale * q.k (before any softcap), from explicit fp32 scores of the
    q/k the layer attends with (under autocast: its bf16 q/k, multiplied in fp32 with autocast off);
    logit_bound: scale * max_t |q_t| * max_s |k_s| (Cauchy-Schwarz), an upper bound any fused kernel can afford.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):  # else the matmul would run in bf16
        qf, kf = q.float(), k.float()
        groups = q.shape[1] // k.shape[1]
        scores = torch.matmul(qf, kf.repeat_interleave(groups, dim=1).transpose(2, 3)) * scale  # (B, H, T, T)
        mask = causal_mask(q.shape[2], window, q.device)
        max_logit = scores.masked_fill(~mask, float("-inf")).amax()
        bound = scale * qf.norm(dim=-1).amax() * kf.norm(dim=-1).amax()
    return {
        "max_logit": max_logit,
        "logit_bound": bound,
        "q_rms": qf.pow(2).mean().sqrt(),
        "k_rms": kf.pow(2).mean().sqrt(),
    }
