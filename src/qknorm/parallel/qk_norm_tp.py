"""QK-norm on a tensor-parallel shard of the attention heads: exact for both scopes.

`shard_attention(attn, tp_mesh)` (called by `parallelize_tp`) turns an `Attention` whose q/k/v projections
are column-sharded into a `TensorParallelAttention`, the way `fully_shard` turns a module into an FSDPModule:
same object, same parameters, a subclass whose only override is the QK-norm call; `n_heads`/`n_kv_heads`
become the local counts, so the attention's views, GQA grouping and SDPA see this rank's heads. When the layer
records diagnostics it also keeps its heads' largest q and k norms, from which `TensorParallelLM` rebuilds the
whole layer's logit bound.

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

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from ..config import QKNormScope
from ..nn.attention import Attention
from ..ops import qk_norm_rope
from ..ops.qk_norm_rope_tp import qk_norm_rope_tp

__all__ = ["TensorParallelAttention", "shard_attention", "sum_grad_over_group"]


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


class TensorParallelAttention(Attention):
    """An `Attention` holding a tensor-parallel shard of the heads. Made by `shard_attention`, not constructed."""

    tp_mesh: DeviceMesh

    def _all_reduce(self, t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.tp_mesh.get_group())

    def _qk_norm_rope(self, q, k, cos, sin):
        q, k = self._local_qk_norm_rope(q, k, cos, sin)
        if self.record_stats:  # this rank's largest q and k norms: TensorParallelLM combines the layer's stats
            self.qk_max_norm = torch.stack([t.detach().float().norm(dim=-1).amax() for t in (q, k)])  # (2,)
        return q, k

    def _local_qk_norm_rope(self, q, k, cos, sin):
        # q (B, T, n_heads_local, D), k (B, T, n_kv_heads_local, D) -> (B, n, T, D) each
        if self.q_norm is None:
            return super()._qk_norm_rope(q, k, cos, sin)
        qn, kn = self.q_norm, self.k_norm
        qw, kw = qn.weight.to_local(), kn.weight.to_local()  # full: this rank's slices; head: the whole (D,)
        kw_ = dict(eps=qn.eps, offset=qn.offset, norm_cast=qn.cast.value, backend=self.backend)
        if self.scope is QKNormScope.HEAD:
            qw, kw = sum_grad_over_group(self.tp_mesh.get_group(), qw, kw)
            return qk_norm_rope(q, k, qw, kw, cos, sin, scope="head", **kw_)
        return qk_norm_rope_tp(q, k, qw, kw, cos, sin, all_reduce=self._all_reduce, group_size=self.tp_mesh.size(),
                               **kw_)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tp={self.tp_mesh.size()}, local heads={self.n_heads}/{self.n_kv_heads}"


def shard_attention(attn: Attention, tp_mesh: DeviceMesh) -> TensorParallelAttention:
    """Make `attn` (q/k/v already column-sharded over `tp_mesh`) see its local heads and shard its QK-norm gains.

    Head counts must divide by the mesh size (`check_tp_degree` in parallel/tensor.py says so in one line)."""
    n = tp_mesh.size()
    attn.__class__ = TensorParallelAttention
    attn.tp_mesh = tp_mesh
    attn.n_heads, attn.n_kv_heads = attn.n_heads // n, attn.n_kv_heads // n
    if attn.q_norm is not None:
        placement = [Shard(0)] if attn.scope is QKNormScope.FULL else [Replicate()]
        for norm in (attn.q_norm, attn.k_norm):
            norm.register_parameter("weight", nn.Parameter(distribute_tensor(norm.weight.detach(), tp_mesh, placement)))
    return attn
