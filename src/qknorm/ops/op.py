"""The Triton QK-RMSNorm + RoPE as torch.library ops, so torch.compile keeps the kernel without graph breaks.

    qknorm::qk_norm_rope(q, k, q_weight?, k_weight?, cos, sin, eps, scope, offset, norm_cast) -> (q_out, k_out)
    qknorm::qk_norm_rope_backward(dq_out, dk_out, q, k, ...) -> (dq, dk, dq_weight, dk_weight)

Both have fake (meta) implementations for tracing; register_autograd wires the backward op as the gradient
(this is the op's torch.autograd.Function). Only q, k, the weights and cos/sin are saved: the backward
recomputes the RMS statistic. cos/sin get no gradient. Triton is imported when an op first runs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["qk_norm_rope_op"]


@torch.library.custom_op("qknorm::qk_norm_rope", mutates_args=())
def _qk_norm_rope(q: Tensor, k: Tensor, q_weight: Optional[Tensor], k_weight: Optional[Tensor], cos: Tensor,
                  sin: Tensor, eps: float, scope: str, offset: float, norm_cast: str) -> tuple[Tensor, Tensor]:
    from .triton_qk_norm_rope import qk_norm_rope_fwd

    return qk_norm_rope_fwd(q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast)


@_qk_norm_rope.register_fake
def _(q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast):
    B, T, H, D = q.shape
    return q.new_empty((B, H, T, D)), k.new_empty((B, k.shape[2], T, D))  # (B, H, T, D), (B, Hkv, T, D)


@torch.library.custom_op("qknorm::qk_norm_rope_backward", mutates_args=())
def _qk_norm_rope_backward(dq_out: Tensor, dk_out: Tensor, q: Tensor, k: Tensor, q_weight: Optional[Tensor],
                           k_weight: Optional[Tensor], cos: Tensor, sin: Tensor, eps: float, scope: str,
                           offset: float, norm_cast: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dq (B, T, H, D), dk (B, T, Hkv, D), dq_weight, dk_weight (empty tensors when there are no weights)."""
    from .triton_qk_norm_rope import qk_norm_rope_bwd

    dq, dk, dqw, dkw = qk_norm_rope_bwd(dq_out, dk_out, q, k, q_weight, k_weight, cos, sin, eps, scope, offset,
                                        norm_cast)
    if dqw is None:  # an op returns tensors, never None
        dqw, dkw = q.new_empty(0), k.new_empty(0)
    return dq, dk, dqw, dkw


@_qk_norm_rope_backward.register_fake
def _(dq_out, dk_out, q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast):
    dqw = q_weight.new_empty(q_weight.shape) if q_weight is not None else q.new_empty(0)
    dkw = k_weight.new_empty(k_weight.shape) if k_weight is not None else k.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), dqw, dkw


def _setup_context(ctx, inputs, output):
    q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast = inputs
    ctx.save_for_backward(q, k, q_weight, k_weight, cos, sin)
    ctx.args = (eps, scope, offset, norm_cast)


def _backward(ctx, dq_out, dk_out):
    q, k, q_weight, k_weight, cos, sin = ctx.saved_tensors
    B, T, H, D = q.shape
    if dq_out is None:
        dq_out = q.new_zeros((B, H, T, D))
    if dk_out is None:
        dk_out = k.new_zeros((B, k.shape[2], T, D))
    dq, dk, dqw, dkw = _qk_norm_rope_backward(dq_out, dk_out, q, k, q_weight, k_weight, cos, sin, *ctx.args)
    return (dq, dk, dqw if q_weight is not None else None, dkw if k_weight is not None else None,
            None, None, None, None, None, None)


_qk_norm_rope.register_autograd(_backward, setup_context=_setup_context)


class _EagerQKNormRope(torch.autograd.Function):
    """The same two kernels as the ops above, for eager mode: a plain autograd.Function costs ~5x less host
    time than a custom op with register_autograd (measured with the kernels stubbed out, 2-core CPU host:
    ~400 us -> ~80 us a forward+backward), which decides whether a sub-millisecond kernel pair keeps the
    GPU busy or waits on Python. torch.compile never sees this class (qk_norm_rope_op picks the op there)."""

    @staticmethod
    def forward(ctx, q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast):
        from .triton_qk_norm_rope import qk_norm_rope_fwd

        ctx.save_for_backward(q, k, q_weight, k_weight, cos, sin)
        ctx.args = (eps, scope, offset, norm_cast)
        return qk_norm_rope_fwd(q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast)

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        from .triton_qk_norm_rope import qk_norm_rope_bwd

        q, k, q_weight, k_weight, cos, sin = ctx.saved_tensors
        B, T, H, D = q.shape
        dq_out = q.new_zeros((B, H, T, D)) if dq_out is None else dq_out
        dk_out = k.new_zeros((B, k.shape[2], T, D)) if dk_out is None else dk_out
        dq, dk, dqw, dkw = qk_norm_rope_bwd(dq_out, dk_out, q, k, q_weight, k_weight, cos, sin, *ctx.args)
        return dq, dk, dqw, dkw, None, None, None, None, None, None


def qk_norm_rope_op(q, k, q_weight, k_weight, cos, sin, eps: float, scope: str, offset: float, norm_cast: str):
    """Checked arguments in (see qknorm.ops.qk_norm_rope), (q (B, H, T, D), k (B, Hkv, T, D)) out.

    Under torch.compile (and for fake or other subclass tensors): the torch.library op, one node in the graph,
    no break. In eager mode on plain tensors: the same kernels through a plain autograd.Function, which has
    far less host overhead."""
    if torch.compiler.is_compiling() or type(q) is not Tensor:  # tracing, fake or other tensor subclasses
        return _qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast)
    return _EagerQKNormRope.apply(q, k, q_weight, k_weight, cos, sin, eps, scope, offset, norm_cast)
