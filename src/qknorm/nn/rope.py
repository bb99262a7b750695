"""Rotary position embedding tables (rotate-half layout, as HF transformers and OLMo-core use).

For head_dim D and position t: inv_freq_i = theta^(-2i/D), i < D/2; with linear scaling the position is
divided by `scaling` (HF rope_type "linear"). cos/sin are (T, D) fp32 with the frequencies repeated
[f_0..f_{D/2-1}, f_0..f_{D/2-1}], to be used as x*cos + rotate_half(x)*sin, rotate_half(x) = cat(-x2, x1).
Applying them is done by `qknorm.ops.qk_norm_rope` together with the QK-norm (the norm comes first: RMSNorm
with learned gains does not commute with RoPE).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def rope_tables(seq_len: int, head_dim: int, *, theta: float, scaling: float = 1.0, offset: int = 0,
                device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim), fp32, for positions offset..offset+seq_len-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    inv_freq = inv_freq / scaling
    pos = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos(), emb.sin()


class RotaryEmbedding(nn.Module):
    """Caches cos/sin tables per (length, device) in eager mode; no parameters, nothing in the state dict."""

    def __init__(self, head_dim: int, *, theta: float, scaling: float = 1.0):
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, float(theta), float(scaling)
        self._cache: dict = {}

    def forward(self, seq_len: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # a few elementwise ops in the graph; a cache would cost a recompile
            return rope_tables(seq_len, self.head_dim, theta=self.theta, scaling=self.scaling, device=device)
        key = (seq_len, str(device))
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = rope_tables(seq_len, self.head_dim, theta=self.theta, scaling=self.scaling,
                                           device=device)
        return self._cache[key]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, scaling={self.scaling}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
