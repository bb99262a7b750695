"""A decoder block with one of four norm placements around its two sub-layers f (attention, then MLP):

  pre        h = x + f(norm_in(x))                     Llama, Qwen3
  reordered  h = x + norm_out(f(x))                    OLMo 2 (no input norm; HF post_attention_layernorm)
  sandwich   h = x + norm_out(f(norm_in(x)))           Gemma 3 (four norms per layer)
  post       h = norm_out(x + f(x))                    classic post-LN
  parallel   h = x + attn(n) + mlp(n), n = norm_in(x)   Cohere, StableLM's parallel residual (one norm)

Unused norms are nn.Identity, resolved at construction, so forward() is the same two lines for all.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..config import ModelConfig, Placement
from ..config_moe import layer_is_moe
from .attention import Attention
from .kv_cache import LayerKV
from .mlp import GatedMLP
from .moe import MoEMLP
from .norm import build_norm


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, *, device=None, dtype=None):
        super().__init__()
        p = config.placement
        has_in = p in (Placement.PRE, Placement.SANDWICH, Placement.PARALLEL)
        has_out = p in (Placement.REORDERED, Placement.SANDWICH, Placement.POST)

        def norm(present: bool) -> nn.Module:
            return build_norm(config, device=device, dtype=dtype) if present else nn.Identity()

        self.attn_norm_in, self.attn_norm_out = norm(has_in), norm(has_out)
        self.mlp_norm_in, self.mlp_norm_out = norm(has_in and p is not Placement.PARALLEL), norm(has_out)
        self.attn = Attention(config, layer_idx, device=device, dtype=dtype)
        mlp = MoEMLP if layer_is_moe(config, layer_idx) else GatedMLP  # n_experts > 0: nn/moe.py
        self.mlp = mlp(config, device=device, dtype=dtype)
        self.post, self.parallel = p is Placement.POST, p is Placement.PARALLEL

    def forward(self, x: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor],
                cache: Optional[LayerKV] = None) -> torch.Tensor:
        # x (B, T, d) -> (B, T, d); rope = (cos, sin), each (T, head_dim), for this layer's attention type and the
        # tokens' positions; cache: this layer's keys/values of earlier positions (None: x is the whole sequence)
        if self.parallel:
            h = self.attn_norm_in(x)
            return x + self.attn(h, *rope, cache) + self.mlp(h)
        x = self._residual(x, lambda h: self.attn(h, *rope, cache), self.attn_norm_in, self.attn_norm_out)
        return self._residual(x, self.mlp, self.mlp_norm_in, self.mlp_norm_out)

    def _residual(self, x, f, norm_in, norm_out):
        if self.post:
            return norm_out(x + f(x))
        return x + norm_out(f(norm_in(x)))
