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
Muon's momentum is torch's default 0.95 with Nesterov, 5 Newton-Schulz steps (in bfloat16, as torch does).

Why one Optimizer: checkpoints (full and sharded), resume and the loop handle a single `torch.optim.Optimizer`.
`MuonWithAdamW` owns all parameter groups and all state (one `state_dict`); its step hands the Muon groups to a
`torch.optim.Muon` and the others to a `torch.optim.AdamW` that share its group dicts and its state, so the
arithmetic is torch's own. Muon needs whole matrices: it is refused on FSDP- or tensor-parallel-sharded
(DTensor) parameters, where each rank would orthogonalize only its shard.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

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
                 weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95):
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
        self._muon.step()
        self._adamw.step()
        return loss
