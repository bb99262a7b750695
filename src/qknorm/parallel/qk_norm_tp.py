"""QK-norm on a tensor-parallel shard of the attention heads: exact for both scopes.

`TensorParallelAttention(config, layer_idx, tp_mesh, attn)` (made by `parallelize_tp`, which puts it in the
block in place of `attn`) is an `Attention` built from the same config that takes over `attn`'s sub-modules (the
q/k/v/o projections, already column/row-sharded, and the QK-norms, whose gains it shards below) and is
constructed with this rank's head counts, so the views, GQA grouping and SDPA see this rank's heads. Its QK
step is a `TensorParallelQKPath` installed through the layer's public `set_qk_path`: composition, no class
swap and no overridden private method. The layer's numerics are the ones the plain layer resolved at
construction (nn/qk_fused.py), so a call parses and checks nothing.

* scope "full" (OLMo 2): the gains are sharded with their heads, `Shard(0)` of the (H*D,) vector, so rank r
  holds the gains of heads [r*H/N, (r+1)*H/N), exactly the rows its q_proj shard produces. The statistic
  over the whole width comes from `qknorm.ops.qk_norm_rope_tp`: per-token partial sums of squares of the
  local heads, one all-reduce of a (2, B*T) fp32 buffer (q and k) forward, one of the partial sum(dy*g*x_hat)
  backward. The gain gradient is local (each rank owns its slice).
* scope "head" (Qwen3, Gemma 3): no communication in the forward. The (D,) gain is shared by every head and
  replicated; each rank's gradient covers only its heads, so the backward sums it over the group (one
  all-reduce of 2*D values, q and k gains together) before it becomes the replicated parameter's gradient.
  Without that sum the ranks' "replicated" gains would drift apart.

The TP group is the 1-D `tp_mesh`'s. Under FSDP2 x TP the parameters seen in forward are the FSDP-unsharded
DTensors on `tp_mesh`, so the same code serves both.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from ..config import ModelConfig, NormCast, QKNormScope
from ..nn.attention import Attention
from ..ops import ROPE_ONLY, QKNumerics, pick_backend, qk_norm_rope_unchecked
from ..ops.qk_norm_rope_tp import qk_norm_rope_tp_unchecked

__all__ = ["TensorParallelAttention", "TensorParallelQKPath", "sum_grad_over_group"]


class _SumGradOverGroup(torch.autograd.Function):
    """Identity forward; the backward sums the gradients over the process group (one all-reduce for all)."""

    @staticmethod
    def forward(ctx, group, *tensors):
        ctx.group = group
        ctx.like = [t.new_empty(0) for t in tensors]  # dtype and device of each
        ctx.shapes = [t.shape for t in tensors]
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        grads = [like.new_zeros(s) if g is None else g for g, like, s in zip(grads, ctx.like, ctx.shapes)]
        flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,): one collective for all
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=ctx.group)
        parts = flat.split([g.numel() for g in grads])
        return (None, *(part.view(s).to(like.dtype) for part, like, s in zip(parts, ctx.like, ctx.shapes)))


def sum_grad_over_group(group, *tensors: torch.Tensor):
    """The tensors unchanged; in the backward their gradients are summed over `group` (Megatron's "f")."""
    return _SumGradOverGroup.apply(group, *tensors)


def qk_norm_rope_tp(q, k, q_weight, k_weight, cos, sin, *, all_reduce: Callable[[torch.Tensor], None],
                    group_size: int, eps: float, offset: float, norm_cast: NormCast, backend: str):
    """The full-width op of `TensorParallelQKPath`, unchecked: `qknorm.ops.qk_norm_rope_tp`'s keywords, resolved
    (norm_cast a NormCast, backend "torch" or "triton" from pick_backend). A module-level name, so that the
    tests' negative control can put a rank-local norm in its place."""
    numerics = QKNumerics(eps=eps, scope=QKNormScope.FULL, offset=offset, norm_cast=norm_cast)
    return qk_norm_rope_tp_unchecked(q, k, q_weight, k_weight, cos, sin, numerics, backend, all_reduce=all_reduce,
                                     group_size=group_size)


class TensorParallelQKPath(nn.Module):
    """The QK step of a layer holding a shard of the heads (q (B, T, n, D), k (B, T, n_kv, D) -> (B, n|n_kv, T, D)):
    per head, the op on the local heads with the replicated gain's gradient summed over the group; full width, the
    two-phase op whose statistic is all-reduced over the group. RoPE alone where the layer has no QK-norm."""

    def __init__(self, tp_mesh: DeviceMesh, numerics: QKNumerics, backend: Optional[str]):
        super().__init__()
        self.tp_mesh, self.numerics, self.backend = tp_mesh, numerics, backend

    def _all_reduce(self, t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.tp_mesh.get_group())

    def forward(self, q, k, cos, sin, q_norm: Optional[nn.Module], k_norm: Optional[nn.Module], start: int = 0):
        which = pick_backend(q, k, self.backend)
        if q_norm is None:
            return qk_norm_rope_unchecked(q, k, None, None, cos, sin, ROPE_ONLY, which)
        qw, kw = q_norm.weight.to_local(), k_norm.weight.to_local()  # full: this rank's slices; head: the whole (D,)
        if self.numerics.scope is QKNormScope.HEAD:
            qw, kw = sum_grad_over_group(self.tp_mesh.get_group(), qw, kw)
            return qk_norm_rope_unchecked(q, k, qw, kw, cos, sin, self.numerics, which)
        n = self.numerics
        return qk_norm_rope_tp(q, k, qw, kw, cos, sin, all_reduce=self._all_reduce, group_size=self.tp_mesh.size(),
                               eps=n.eps, offset=n.offset, norm_cast=n.norm_cast, backend=which)

    def extra_repr(self) -> str:
        return f"scope={self.numerics.scope.value}, tp={self.tp_mesh.size()}"


class TensorParallelAttention(Attention):
    """An `Attention` holding a tensor-parallel shard of the heads, in place of a plain one (see the module
    docstring). `attn`'s q/k/v projections must be column-sharded over `tp_mesh` already (o_proj row-sharded);
    head counts must divide by the mesh size (`check_tp_degree` in parallel/tensor.py says so in one line)."""

    def __init__(self, config: ModelConfig, layer_idx: int, tp_mesh: DeviceMesh, attn: Attention):
        super().__init__(config, layer_idx, device="meta")  # the layer's settings; its modules are attn's, below
        self.tp_mesh = tp_mesh
        n = tp_mesh.size()
        self.n_heads, self.n_kv_heads = self.n_heads // n, self.n_kv_heads // n  # this rank's heads
        for name, child in attn.named_children():  # the sharded projections and the norms (whole gains)
            if name != "qk_path":
                setattr(self, name, child)
        if self.q_norm is not None:
            placement = [Shard(0)] if self.scope is QKNormScope.FULL else [Replicate()]
            for norm in (self.q_norm, self.k_norm):
                w = nn.Parameter(distribute_tensor(norm.weight.detach(), tp_mesh, placement))
                norm.register_parameter("weight", w)
        self.set_qk_path(TensorParallelQKPath(tp_mesh, attn.qk_path.numerics, self.backend))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tp={self.tp_mesh.size()}, local heads={self.n_heads}/{self.n_kv_heads}"
