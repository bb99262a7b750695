"""Muon on the hidden matrices, AdamW on everything else: one `torch.optim.Optimizer` for the loop and checkpoints.

Which parameters (Jordan 2024, "Muon: an optimizer for hidden layers"; Liu et al. 2025, arXiv 2502.16982):
  Muon   every 2-D weight inside the decoder blocks: attention q_proj, k_proj, v_proj, o_proj and MLP gate_proj,
         up_proj, down_proj. Muon orthogonalizes a matrix's update (Newton-Schulz), which treats the weight as
         a linear map between hidden spaces; that is what these are. q, k and v stay separate matrices (Muon
         orthogonalizes each on its own, which Karpathy found better than one fused QKV matrix).
  AdamW  the embedding (a lookup table: each row is updated only by its own tokens, not a linear map), the LM
         head (it maps to the vocabulary; Muon's authors keep both ends on AdamW), and every 0-D/1-D
         parameter: norm gains (QK-norm too), biases, l2 QK-norm temperatures, sigmaReparam gammas. These keep
         the decay / no-decay split of `optim.param_groups` (weight_decay, decay_norms).

Learning rates. One `lr` (and one schedule, `optim.lr_at`) drives both. For the AdamW groups it is AdamW's
learning rate, as with optimizer=adamw. For the Muon group torch's `adjust_lr_fn="match_rms_adamw"` scales each
matrix's step to 0.2 * sqrt(max(rows, cols)) * lr: an orthogonalized update has RMS ~ 1/sqrt(max(rows, cols)),
so every Muon update has RMS ~ 0.2 * lr, the typical RMS of an AdamW update (Liu et al.), and an LR grid tuned
for AdamW means the same thing for Muon. Weight decay is decoupled in both (p -= lr * weight_decay * p).
Muon's momentum is torch's default 0.95 with Nesterov, 5 Newton-Schulz steps with torch's coefficients, in the
dtype that is fast here (train/newton_schulz.py): bfloat16, as torch does, unless a short probe finds bf16 matmuls
slow on this machine (an AVX2-only CPU emulates them ~30x slower than fp32), then float32. `ns_dtype` ("auto",
"bf16", "fp32") sets it; `precision` says what was chosen and how (run.json and the study record it).

Why one Optimizer: checkpoints (full and sharded), resume and the loop handle a single `torch.optim.Optimizer`.
`MuonWithAdamW` owns all parameter groups and all state (one `state_dict`); its step hands the other groups to a
`torch.optim.AdamW` that shares its group dicts and its state, so that arithmetic is torch's own, and runs the Muon
update of torch's `_single_tensor_muon` on the Muon groups (torch's `torch.optim.Muon` builds and checks them)
with the Newton-Schulz dtype free: in bf16 it is torch's step exactly (tests/train/test_muon.py). Muon needs
whole matrices: it is refused on FSDP- or tensor-parallel-sharded
(DTensor) parameters, where each rank would orthogonalize only its shard.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .newton_schulz import NSPrecision, choose_ns_dtype, newton_schulz

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support has no sharded parameters either
    DTensor = ()

__all__ = ["MuonWithAdamW", "muon_param_names", "ALGORITHM", "MUON", "ADAMW"]

ALGORITHM, MUON, ADAMW = "algorithm", "muon", "adamw"  # the key tagging each param group, and its values
_HEAD_PREFIXES = ("embed.", "lm_head.")


def muon_param_names(model: nn.Module) -> List[str]:
    """Names of the parameters Muon updates: the 2-D weights of the decoder blocks (not embedding or head)."""
    return [n for n, p in model.named_parameters()
            if p.ndim == 2 and p.requires_grad and not n.startswith(_HEAD_PREFIXES)]


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on groups tagged `algorithm="muon"`, AdamW on the rest (see the module docstring).

    muon_groups / adamw_groups: lists of param-group dicts (with "params" and any per-group settings).
    """

    def __init__(self, muon_groups: List[Dict[str, Any]], adamw_groups: List[Dict[str, Any]], *, lr: float,
                 weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                 ns_dtype: str = "auto"):
        for g in muon_groups:
            for p in g["params"]:
                if isinstance(p, DTensor):
                    raise ConfigError("optimizer='muon' needs whole matrices: it does not run on FSDP- or tensor-"
                                      "parallel-sharded parameters; use parallel='ddp' or optimizer='adamw'")
        muon = torch.optim.Muon([{**g, ALGORITHM: MUON} for g in muon_groups], lr=lr, weight_decay=weight_decay,
                                momentum=momentum, nesterov=True, adjust_lr_fn="match_rms_adamw")
        adamw = torch.optim.AdamW([{**g, ALGORITHM: ADAMW} for g in adamw_groups], lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay)
        super().__init__([*muon.param_groups, *adamw.param_groups], {})
        self._muon, self._adamw = muon, adamw
        shapes = Counter(tuple(p.shape) for g in muon.param_groups for p in g["params"])
        device = next((p.device for g in muon.param_groups for p in g["params"]), torch.device("cpu"))
        self.precision: NSPrecision = choose_ns_dtype(ns_dtype, device, shapes.most_common(1)[0][0] if shapes
                                                      else (1, 1))

    def _link(self) -> None:
        """Point the two torch optimizers at this one's groups and state (load_state_dict replaces both)."""
        self._muon.param_groups = [g for g in self.param_groups if g[ALGORITHM] == MUON]
        self._adamw.param_groups = [g for g in self.param_groups if g[ALGORITHM] == ADAMW]
        self._muon.state = self._adamw.state = self.state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if any(ALGORITHM not in g for g in state_dict.get("param_groups", [])):
            raise CheckpointError("the optimizer state was saved by another optimizer (AdamW), not optimizer='muon'")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._link()
        for group in self._muon.param_groups:
            self._muon_group(group)
        self._adamw.step()
        return loss

    def _muon_group(self, group: Dict[str, Any]) -> None:
        """torch.optim.Muon's update of one group (`_single_tensor_muon`), Newton-Schulz in `precision.dtype`."""
        lr, wd, mu = float(group["lr"]), group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)
            update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
            update = newton_schulz(update, self.precision.torch_dtype, coefficients=group["ns_coefficients"],
                                   steps=group["ns_steps"], eps=group["eps"])
            p.mul_(1 - lr * wd)
            p.add_(update, alpha=-lr * _lr_ratio(group["adjust_lr_fn"], p.shape))


def _lr_ratio(adjust_lr_fn, shape) -> float:
    """torch.optim.Muon's `_adjust_lr` factor: 0.2 sqrt(max(A, B)) ("match_rms_adamw"), sqrt(max(1, A / B))
    ("original" / None)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    return 1.0
