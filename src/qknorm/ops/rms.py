"""The one definition of RMSNorm's numerics, used by the block norms (nn/norm.py) and the QK-norm reference
(ops/reference.py), which the Triton kernel is checked against:

    r  = rsqrt(mean(x^2) + eps)            over `dims`, in fp32 (float64 for float64 inputs)
    xh = x * r
    xh = xh.to(x.dtype)                     norm_cast "input" only (Llama, Qwen3: round before the weight)
    y  = xh * (w + offset)                  in fp32: norm_cast "fp32" (OLMo 2) and offset 1 (Gemma: 1 + w)

`rms_normalize` returns y in the compute dtype; the caller casts once (the block norm right away, the QK op
after RoPE). Autograd treats the "input" rounding as identity for x (straight through), as autograd of the HF
code does.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from ..config import NormCast

__all__ = ["compute_dtype", "rms_normalize"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_normalize(x: torch.Tensor, gain: torch.Tensor, *, eps: float, offset: float, cast: NormCast,
                  dims: Union[int, Tuple[int, ...]] = -1) -> torch.Tensor:
    """(x / rms(x over dims)) * (gain + offset) in the compute dtype; `gain` broadcasts against x. `cast` is a
    NormCast, resolved by the caller (the block norm at construction, the QK op at its entry)."""
    cd = compute_dtype(x.dtype)
    xf = x.to(cd)
    xh = xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)
    if cast is NormCast.INPUT:
        xh = xh.to(x.dtype).to(cd)
    return xh * (gain.to(cd) + offset)
