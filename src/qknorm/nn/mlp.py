"""Gated MLP: down(act(gate(x)) * up(x)); SiLU gives SwiGLU (Llama, Qwen3, OLMo 2), tanh-GELU gives GeGLU (Gemma)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Activation, ModelConfig
from .sigma_reparam import linear_class


class GatedMLP(nn.Module):
    def __init__(self, config: ModelConfig, *, d_ff: Optional[int] = None, device=None, dtype=None):
        super().__init__()  # d_ff: the hidden width, None = config.d_ff (a shared expert's: moe_d_ff)
        kw = dict(bias=False, device=device, dtype=dtype)
        linear = linear_class(config.sigma_reparam)  # nn.Linear, or sigmaReparam's W_hat = gamma / sigma(W) * W
        f = d_ff or config.d_ff
        self.gate_proj = linear(config.d_model, f, **kw)
        self.up_proj = linear(config.d_model, f, **kw)
        self.down_proj = linear(f, config.d_model, **kw)
        self.tanh_gelu = config.activation is Activation.GELU_TANH

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        g = self.gate_proj(x)
        g = F.gelu(g, approximate="tanh") if self.tanh_gelu else F.silu(g)
        return self.down_proj(g * self.up_proj(x))
