"""Mixture-of-experts MLP (OLMoE, Qwen3-MoE, Llama 4): a top-k router over E gated-MLP experts, and its balancing
loss. With moe_router "softmax" (OLMoE, Qwen3-MoE) the weights scale the experts' outputs:

    p = softmax(x W_r^T)                      (N, E) in fp32, over all experts
    w, e = topk(p, k)                         (N, k); norm_topk_prob: w / sum(w)  (OLMoE: off, Qwen3-MoE: on)
    y = sum_j w_j * down_e_j(act(gate_e_j(x)) * up_e_j(x))

with "sigmoid" (Llama 4) the top-k is taken of the logits and each chosen logit's sigmoid scales the expert's
input (not the same function: the experts are not linear), and a shared expert (moe_shared_expert) adds to it:

    v, e = topk(x W_r^T, k)                   (N, k) in x's dtype;  s = sigmoid(v) (fp32, cast back)
    y = shared(x) + sum_j expert_e_j(s_j * x)

The experts are three stacked tensors (E, F, d), (E, F, d), (E, d, F): per-expert keys on disk stack into them
(interop/hf_keys.py). This is the correct-first path: a loop over the experts that some token chose, each
adding its weighted output into its tokens' rows with index_add_ (differentiable, so it also trains);
grouped matmuls are a later, faster path.

The load-balancing loss (Switch Transformer, eqs. 4-6, as transformers computes it for these families):
    f_e = (number of top-k slots routed to e) / N,   P_e = mean_n p_ne,   L = E * sum_e f_e P_e
summed over the sparse layers' slots and tokens together. `MoEMLP.router_logits` holds the last forward's
logits (N, E) so the model can form it after a forward (`TransformerLM.router_aux_loss`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Activation, ModelConfig
from ..config_moe import MoERouter, expert_d_ff
from .mlp import GatedMLP

__all__ = ["MoEMLP", "load_balancing_loss", "router_aux_loss"]


class MoEMLP(nn.Module):
    """Top-k routed mixture of gated-MLP experts; forward (B, T, d) -> (B, T, d)."""

    def __init__(self, config: ModelConfig, *, device=None, dtype=None):
        super().__init__()
        E, d, f = config.n_experts, config.d_model, expert_d_ff(config)
        kw = dict(device=device, dtype=dtype)
        self.router = nn.Linear(d, E, bias=False, **kw)  # (E, d): HF mlp.gate.weight
        self.gate_proj = nn.Parameter(torch.empty(E, f, d, **kw))
        self.up_proj = nn.Parameter(torch.empty(E, f, d, **kw))
        self.down_proj = nn.Parameter(torch.empty(E, d, f, **kw))
        self.top_k, self.n_experts, self.norm_topk = config.experts_per_token, E, config.norm_topk_prob
        self.tanh_gelu = config.activation is Activation.GELU_TANH
        self.sigmoid = config.moe_router is MoERouter.SIGMOID  # Llama 4: sigmoid scores on the expert inputs
        # Llama 4's shared expert: a gated MLP of an expert's width on every token
        self.shared = GatedMLP(config, d_ff=f, device=device, dtype=dtype) if config.moe_shared_expert else None
        self.router_logits: Optional[torch.Tensor] = None  # (N, E) of the last forward

    @torch.no_grad()
    def reset_parameters(self, std: float, n_layers: int) -> None:
        """Normal(0, std) router and gate/up; down (an output projection) std / sqrt(2 n_layers)."""
        for p in (self.router.weight, self.gate_proj, self.up_proj):
            nn.init.normal_(p, 0.0, std)
        nn.init.normal_(self.down_proj, 0.0, std / math.sqrt(2 * n_layers))

    def route(self, x: torch.Tensor):
        """(N, d) -> router logits (N, E), routing weights (N, k) in x's dtype, expert indices (N, k)."""
        logits = self.router(x)
        if self.sigmoid:  # Llama 4: top-k of the logits, then their sigmoid (fp32, cast back as transformers)
            top, idx = torch.topk(logits, self.top_k, dim=-1)
            return logits, torch.sigmoid(top.float()).to(logits.dtype), idx
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, idx = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(logits.dtype), idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        flat = x.reshape(-1, x.shape[-1])  # (N, d)
        logits, weights, idx = self.route(flat)
        self.router_logits = logits
        out = torch.zeros_like(flat)
        for e in idx.unique().tolist():  # the experts some token chose, in increasing order
            slot, tok = torch.where(idx.T == e)  # (k, N) mask: top-k slot and token of each routing to e
            w = weights[tok, slot, None]  # (n_e, 1)
            y = self._expert(e, flat[tok] * w) if self.sigmoid else self._expert(e, flat[tok]) * w  # (n_e, d)
            out.index_add_(0, tok, y.to(out.dtype))
        if self.shared is not None:
            out = self.shared(flat) + out
        return out.view_as(x)

    def _expert(self, e: int, h: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d)
        g = F.linear(h, self.gate_proj[e])
        g = F.gelu(g, approximate="tanh") if self.tanh_gelu else F.silu(g)
        return F.linear(g * F.linear(h, self.up_proj[e]), self.down_proj[e])


def load_balancing_loss(router_logits: Sequence[torch.Tensor], n_experts: int, top_k: int) -> torch.Tensor:
    """E * sum_e f_e P_e over every layer's (N, E) router logits (module docstring); a 0-dim fp32 tensor."""
    if not router_logits:
        raise ValueError("load_balancing_loss needs the router logits of at least one sparse layer")
    counts = torch.zeros(n_experts, dtype=torch.float32, device=router_logits[0].device)
    prob_sum = torch.zeros_like(counts)
    rows = 0
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
        chosen = torch.topk(probs, top_k, dim=-1).indices  # (N, k)
        counts = counts + F.one_hot(chosen, n_experts).sum(dim=(0, 1)).float()
        prob_sum = prob_sum + probs.sum(dim=0)
        rows += probs.shape[0]
    return n_experts * torch.sum((counts / rows) * (prob_sum / rows))


def router_aux_loss(model: nn.Module) -> Optional[torch.Tensor]:
    """The load-balancing loss of the last forward of `model`'s sparse layers (any wrapper of a TransformerLM:
    DDP, FSDP, torch.compile), or None when it has none."""
    sparse = [m for m in model.modules() if isinstance(m, MoEMLP) and m.router_logits is not None]
    if not sparse:
        return None
    return load_balancing_loss([m.router_logits for m in sparse], sparse[0].n_experts, sparse[0].top_k)
