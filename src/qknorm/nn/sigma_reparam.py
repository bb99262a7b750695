"""sigmaReparam linears (Zhai et al. 2023, arXiv 2303.06296): W_hat = gamma / sigma(W) * W.

sigma(W) is W's spectral norm, estimated by power iteration on two persistent unit vectors u (out,) and v (in,):

    v <- W^T u / |W^T u|,   u <- W v / |W v|          one step per training forward, under no_grad
    sigma = u . (W v)                                   differentiable in W, not through u and v

u and v are buffers (saved in the state dict, so a resumed run continues the same iteration); gamma is a
learnable scalar per matrix. Zhai et al. show that bounding the spectral norm of the attention weights keeps
the attention entropy from collapsing; the learned gamma lets the layer keep whatever scale it needs, while
every update to W moves only its direction.

Initialisation: u, v are W's exact top singular vectors and gamma = sigma(W) (one SVD per matrix, when the
model is built or reset), so W_hat = W at init: a sigma_reparam model starts as the same function as the plain
one, and the power iteration starts at its fixed point. No iteration runs in eval mode or under no_grad
(validation, diagnostics, generation): those use the current estimate.

The estimate u.(Wv) is a lower bound of sigma(W) (|u| = |v| = 1); it tracks W as it changes, one step behind.
Cost per forward: two matrix-vector products and one elementwise scaling of W, O(out * in), against the
O(tokens * out * in) of the matmul.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SigmaReparamLinear", "linear_class"]


class SigmaReparamLinear(nn.Linear):
    """nn.Linear whose weight is used as gamma / sigma(W) * W (state keys: weight, bias, gamma, u, v)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        kw = dict(device=device, dtype=dtype)
        self.gamma = nn.Parameter(torch.ones((), **kw))
        self.register_buffer("u", F.normalize(torch.ones(out_features, **kw), dim=0))
        self.register_buffer("v", F.normalize(torch.ones(in_features, **kw), dim=0))
        self.reset_reparam()

    @torch.no_grad()
    def reset_reparam(self) -> None:
        """u, v := W's top singular vectors, gamma := sigma(W), so that W_hat = W (call after changing W)."""
        if self.weight.is_meta:
            return
        U, S, Vh = torch.linalg.svd(self.weight.float(), full_matrices=False)
        self.u.copy_(U[:, 0])
        self.v.copy_(Vh[0])
        self.gamma.fill_(S[0].item())

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "gamma"):  # nn.Linear.__init__ calls this before gamma, u and v exist
            self.reset_reparam()

    @torch.no_grad()
    def power_iteration(self) -> None:
        """One step of the power iteration on u and v (in place, fp32 arithmetic, outside any autocast)."""
        with torch.autocast(self.weight.device.type, enabled=False):
            w = self.weight.float()
            v = F.normalize(w.t() @ self.u.float(), dim=0)
            u = F.normalize(w @ v, dim=0)
        self.v.copy_(v)
        self.u.copy_(u)

    def sigma(self) -> torch.Tensor:
        """The current estimate u . (W v) (a 0-d fp32 tensor, differentiable in W, outside any autocast)."""
        u, v = self.u.float().clone(), self.v.float().clone()  # clones: the next forward updates u, v in place
        with torch.autocast(self.weight.device.type, enabled=False):
            return torch.dot(u, self.weight.float() @ v)

    def effective_weight(self) -> torch.Tensor:
        """W_hat = gamma / sigma * W in the weight's dtype (after this forward's power-iteration step)."""
        if self.training and torch.is_grad_enabled():
            self.power_iteration()
        return (self.gamma.float() / self.sigma() * self.weight.float()).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", sigma_reparam=True"


def linear_class(sigma_reparam: bool) -> type:
    """The linear layer class of the attention and MLP projections."""
    return SigmaReparamLinear if sigma_reparam else nn.Linear
