"""Normalization layers with the exact numerics of each family.

RMSNorm(x) = x * rsqrt(mean(x^2) + eps) computed in fp32, then scaled by a learned gain g (ops/rms.py holds the
one definition the QK-norm op shares):
  norm_cast="input" (Llama, Qwen3):   g * x_hat.to(input_dtype)              g = w, init 1
  norm_cast="fp32"  (OLMo 2):         (g.float() * x_hat).to(input_dtype)    g = w, init 1
  offset=1.0        (Gemma 3):        (x_hat * (1 + w.float())).to(dtype)    w init 0 (stored as HF stores it)
The result is in the input's dtype. LayerNorm (classic post-LN baseline, StableLM) is torch's, with bias, or
without (`layernorm_bias=False`, Cohere); without gain and bias (`layernorm_weight=False`, OLMo 1) it is
`PlainLayerNorm`: computed in fp32 and cast once, as OLMo 1 does. `dim` may be a shape, e.g. (heads, head_dim)
for per-head QK gains.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, NormCast, NormType
from ..ops.rms import rms_normalize


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with an explicit cast order and an optional weight offset."""

    def __init__(self, dim, *, eps: float = 1e-6, offset: float = 0.0, cast: NormCast = NormCast.INPUT,
                 device=None, dtype=None):
        super().__init__()
        self.eps, self.offset, self.cast = float(eps), float(offset), NormCast.parse("norm_cast", cast)
        init = torch.zeros if offset else torch.ones
        self.weight = nn.Parameter(init(dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.offset else nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim) in x's dtype
        return rms_normalize(x, self.weight, eps=self.eps, offset=self.offset, cast=self.cast).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, offset={self.offset}, cast={self.cast.value}"


class PlainLayerNorm(nn.Module):
    """LayerNorm over the last dimension without gain or bias, in fp32, cast back once (OLMo 1's block norm)."""

    def __init__(self, dim: int, *, eps: float):
        super().__init__()
        self.dim, self.eps = int(dim), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim) in x's dtype
        return F.layer_norm(x.float(), (self.dim,), None, None, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, weight=none, bias=none"


def build_norm(config: ModelConfig, dim: int | None = None, *, device=None, dtype=None) -> nn.Module:
    """The block/final norm the config asks for (RMSNorm with its numerics, or LayerNorm with or without
    gain and bias)."""
    dim = dim or config.d_model
    if config.norm_type is NormType.LAYERNORM and not config.layernorm_weight:
        return PlainLayerNorm(dim, eps=config.norm_eps)
    if config.norm_type is NormType.LAYERNORM:
        return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.layernorm_bias, device=device, dtype=dtype)
    return RMSNorm(dim, eps=config.norm_eps, offset=config.norm_offset, cast=config.norm_cast,
                   device=device, dtype=dtype)
