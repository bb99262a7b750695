"""QK-norm and RoPE composed in PyTorch, for the layers the fused op does not serve (config_variants.fused_layer).

One layer's q (B, T, H, D) and k (B, T, Hkv, D) become q (B, H, T, D), k (B, Hkv, T, D), in this order:

  1. QK-norm, when the layer has one and it comes before RoPE      (any type, gain and scope: nn/qk_norm.py),
     then with clip_qkv c, q and k clamped to [-c, c]               (OLMoE's order)
  2. RoPE, when the layer has it, on the first rotary_dim dims of each head (the rest pass through):
       rotate-half (Llama): the op's own rotation (ops.qk_norm_rope without weights, unchecked: the layer's
       shapes are right by construction)
       interleaved (Cohere, Llama 4): pairs (x0, x1), (x2, x3).. rotate; computed as the same rotate-half on the
       de-interleaved dims [x0, x2, .., x1, x3, ..] and re-interleaved, which is term for term HF's
       x*cos + rotate_half_interleaved(x)*sin (and Llama 4's complex product (a + ib)(cos + i sin))
  3. QK-norm, when it comes after RoPE (HunYuan, Llama 4)
  4. on NoPE layers with temperature tuning (Llama 4): q at absolute position p times
       log1p(floor((p + 1) / floor_scale)) * attn_scale + 1          (Nakanishi 2025, arXiv 2501.19399)

The norms normalize in the (B, T, n, D) layout the HF families use; steps 2-4 keep that layout and one transpose
at the end gives the attention layout.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..ops import ROPE_ONLY, pick_backend, qk_norm_rope_unchecked

__all__ = ["QKComposed", "rotate", "nope_temperature"]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool,
           backend: Optional[str] = None) -> torch.Tensor:
    """RoPE on the first rd = cos.shape[-1] dims of each head of x (B, T, n, D); (B, T, n, D) in x's dtype."""
    rd = cos.shape[-1]
    part, rest = x[..., :rd], x[..., rd:]
    if interleaved:
        part = torch.cat((part[..., 0::2], part[..., 1::2]), dim=-1)  # (B, T, n, rd): evens, then odds
    one = part[:, :, :1]  # the op rotates a k too: one head's worth, discarded
    out, _ = qk_norm_rope_unchecked(part, one, None, None, cos, sin, ROPE_ONLY, pick_backend(part, one, backend))
    out = out.transpose(1, 2)  # (B, T, n, rd)
    if interleaved:
        half = rd // 2
        out = torch.stack((out[..., :half], out[..., half:]), dim=-1).flatten(-2)  # (B, T, n, rd) re-interleaved
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


def nope_temperature(T: int, start: int, attn_scale: float, floor_scale: float, device) -> torch.Tensor:
    """(T,) fp32 scales of the queries at absolute positions start..start+T-1 (Llama 4 temperature tuning)."""
    positions = torch.arange(T, device=device) + start
    return torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale)) * attn_scale + 1.0


class QKComposed(nn.Module):
    """Steps 1-4 above for one layer; the norms belong to the attention layer (its state dict), passed in."""

    def __init__(self, *, has_rope: bool, after_rope: bool, interleaved: bool,
                 temperature: Optional[Tuple[float, float]], backend: Optional[str], clip: Optional[float] = None):
        super().__init__()
        self.clip = clip  # clip_qkv between a QK-norm before RoPE and RoPE (OLMoE)
        self.has_rope, self.after_rope, self.interleaved = has_rope, after_rope, interleaved
        self.temperature, self.backend = temperature, backend

    def forward(self, q, k, cos, sin, q_norm: Optional[nn.Module], k_norm: Optional[nn.Module], start: int):
        # q (B, T, H, D), k (B, T, Hkv, D); cos/sin (T, rotary_dim); start: absolute position of the first token
        if q_norm is not None and not self.after_rope:
            q, k = q_norm(q), k_norm(k)
            if self.clip is not None:
                q, k = q.clamp(-self.clip, self.clip), k.clamp(-self.clip, self.clip)
        if self.has_rope:
            q = rotate(q, cos, sin, interleaved=self.interleaved, backend=self.backend)
            k = rotate(k, cos, sin, interleaved=self.interleaved, backend=self.backend)
        if q_norm is not None and self.after_rope:
            q, k = q_norm(q), k_norm(k)
        if self.temperature is not None and not self.has_rope:
            scales = nope_temperature(q.shape[1], start, *self.temperature, q.device)  # (T,)
            q = (q * scales[None, :, None, None]).to(q.dtype)
        return q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()  # (B, H, T, D), (B, Hkv, T, D)

    def extra_repr(self) -> str:
        return (f"rope={self.has_rope}, norm_after_rope={self.after_rope}, interleaved={self.interleaved}, "
                f"temperature={self.temperature}" + (f", clip={self.clip:g}" if self.clip is not None else ""))
