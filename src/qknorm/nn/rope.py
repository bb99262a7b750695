"""Rotary position embedding: the RoPE variants, as data, and the cos/sin tables every attention path consumes.

A variant changes only the inverse frequencies inv_freq (D/2,) and, for YaRN, the amplitude of cos and sin.
The model, the torch reference op and the fused Triton kernel all take the (T, D) tables, so a variant is just
a table. For head_dim D and position t, angle_i(t) = t * inv_freq_i; cos/sin are (T, D) fp32 with the angles
repeated [a_0..a_{D/2-1}, a_0..a_{D/2-1}] (the rotate-half layout of HF transformers and OLMo-core), used as
x*cos + rotate_half(x)*sin with rotate_half(x) = cat(-x2, x1) by `qknorm.ops.qk_norm_rope`.

  default  inv_freq_i = theta^(-2i/D)                                         (Su et al. 2021, RoFormer)
  linear   inv_freq / factor: position interpolation                         (Chen et al. 2023)
  llama3   wavelengths 2*pi/inv_freq above original/low_freq_factor are divided by factor, below
           original/high_freq_factor kept, in between a smooth blend          (Llama 3.1, Meta 2024)
  yarn     "NTK-by-parts": interpolate (divide by factor) the dimensions that turn fewer than beta_slow times
           over the original context, keep those turning more than beta_fast times, ramp linearly between;
           cos and sin multiplied by attention_factor, default 0.1 ln(factor) + 1  (Peng et al. 2023, YaRN)

Each variant is computed in fp32 with the arithmetic, in the order, of transformers 5.x's `ROPE_INIT_FUNCTIONS`,
so the tables are bit-identical to HF's (tests/nn/test_rope.py checks it). `dynamic` NTK scaling is refused: its
frequencies depend on the longest sequence the model has seen (transformers keeps them as state across calls),
so the same positions would get different tables in different calls; `longrope` and others are refused too.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..rope_scaling import RopeScaling, RopeType

__all__ = ["inv_freq", "rope_tables", "RotaryEmbedding"]


# ---------------------------------------------------------------------------------------------- frequencies
def _default_inv_freq(head_dim: int, theta: float, device) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim  # (D/2,)
    return 1.0 / (theta ** exponents)


def _llama3_inv_freq(head_dim: int, theta: float, s: RopeScaling, device) -> torch.Tensor:
    inv_freq = _default_inv_freq(head_dim, theta, device)
    context = s.original_max_position_embeddings
    long_wave, short_wave = context / s.low_freq_factor, context / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > long_wave, inv_freq / s.factor, inv_freq)  # long waves: interpolated
    blend = (context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - blend) * scaled / s.factor + blend * scaled
    between = ~(wavelen < short_wave) * ~(wavelen > long_wave)
    return torch.where(between, blended, scaled)


def _yarn_inv_freq(head_dim: int, theta: float, s: RopeScaling, device) -> torch.Tensor:
    context = s.original_max_position_embeddings
    fast, slow = s.beta_fast or 32, s.beta_slow or 1

    def dim_of(turns: float) -> float:  # the dimension index whose wave turns `turns` times over `context`
        return (head_dim * math.log(context / (turns * 2 * math.pi))) / (2 * math.log(theta))

    lo, hi = dim_of(fast), dim_of(slow)
    if s.truncate is not False:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    if lo == hi:
        hi += 0.001  # no zero-width ramp
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)  # (D/2,)
    keep = (1 - ramp).to(device=device, dtype=torch.float)  # 1 = extrapolate (unscaled), 0 = interpolate
    wavelength_base = theta ** (torch.arange(0, head_dim, 2).to(device=device, dtype=torch.float) / head_dim)
    unscaled, interpolated = 1.0 / wavelength_base, 1.0 / (s.factor * wavelength_base)
    return interpolated * (1 - keep) + unscaled * keep


def inv_freq(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) fp32 of RoPE with `theta` and the variant `scaling` (None = plain)."""
    if scaling is None:
        return _default_inv_freq(head_dim, theta, device)
    if scaling.rope_type is RopeType.LINEAR:
        return _default_inv_freq(head_dim, theta, device) / scaling.factor
    if scaling.rope_type is RopeType.LLAMA3:
        return _llama3_inv_freq(head_dim, theta, scaling, device)
    return _yarn_inv_freq(head_dim, theta, scaling, device)


ScalingArg = Union[None, RopeScaling, float]


def rope_tables(seq_len: int, head_dim: int, *, theta: float, scaling: ScalingArg = None, offset: int = 0,
                device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim), fp32, for positions offset..offset+seq_len-1.

    scaling: a RopeScaling, None (plain RoPE), or a number (a linear factor; 1 = plain).
    """
    scaling = RopeScaling.from_value(scaling)
    freqs = inv_freq(head_dim, theta, scaling, device)  # (D/2,)
    pos = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)  # (T,)
    angles = torch.outer(pos, freqs)  # (T, D/2)
    emb = torch.cat((angles, angles), dim=-1)  # (T, D)
    cos, sin = emb.cos(), emb.sin()
    amplitude = 1.0 if scaling is None else scaling.attention_scaling
    if amplitude != 1.0:
        cos, sin = cos * amplitude, sin * amplitude
    return cos, sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables of one RoPE (theta + variant). No parameters, nothing in the state dict.

    In eager mode it keeps, per device, the table of positions 0..n-1 for the largest n asked so far and returns
    slices of it (each position's row is computed alone, so a slice equals a fresh table); under torch.compile
    it computes the table in the graph (a cache would cost a recompile).
    """

    def __init__(self, head_dim: int, *, theta: float, scaling: ScalingArg = None):
        super().__init__()
        self.head_dim, self.theta = head_dim, float(theta)
        self.scaling = RopeScaling.from_value(scaling)
        self._cache: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, seq_len: int, device: torch.device, offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (seq_len, head_dim) fp32 for positions offset..offset+seq_len-1."""
        if torch.compiler.is_compiling():
            return rope_tables(seq_len, self.head_dim, theta=self.theta, scaling=self.scaling, offset=offset,
                               device=device)
        end, key = offset + seq_len, str(device)
        cached = self._cache.get(key)
        if cached is None or cached[0].shape[0] < end:
            cached = rope_tables(end, self.head_dim, theta=self.theta, scaling=self.scaling, device=device)
            self._cache[key] = cached
        cos, sin = cached
        return cos[offset:end], sin[offset:end]

    def extra_repr(self) -> str:
        scaling = None if self.scaling is None else self.scaling.to_dict()
        return f"head_dim={self.head_dim}, theta={self.theta}, scaling={scaling}"
