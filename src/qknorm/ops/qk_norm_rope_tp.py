"""Full-width (OLMo 2) QK-RMSNorm + RoPE on a tensor-parallel shard of the heads, exact, in two phases.

OLMo 2 normalizes q over the whole projection width of a token: r_t = rsqrt(sum_{h<H, d<D} x_thd^2 / (H*D) + eps).
Under tensor parallelism a rank holds only n = H/N of the heads (and the matching slice of the (H*D,) gain),
so the statistic needs the other ranks' heads, but only as one number per token:

    forward   s_t  = sum_{local h, d} x^2                 (2, B*T) fp32: q row, k row       phase 1
              all_reduce(s)                               one collective of 2*B*T fp32 values
              y    = g * x * r,  r = rsqrt(s_t/W + eps)   W = H*D for q, Hkv*D for k (global)
              out  = y*cos + rotate_half(y)*sin -> (B, n, T, D)                            phase 2
    backward  dy   = RoPE^T(dout);  p_t = sum_{local h, d} dy * g * x_hat                   phase 1
              all_reduce(p)                               one collective of 2*B*T fp32 values
              dx   = r * (dy*g - x_hat * p_t / W)                                           phase 2
              dg   = sum_t dy * x_hat   (the local slice of the gain: sharded with its heads, no reduction)

This is the RMSNorm gradient dx = r*(dy*g - x_hat*mean(dy*g*x_hat)) with the mean over the full width split
into local partial sums. q and k share each collective (a (2, B*T) buffer): the same bytes as one (B, T)
all-reduce per tensor, half the launches. Numerics options are the single-GPU op's (ops/reference.py):
norm_cast "fp32" multiplies the gain in fp32, "input" rounds x_hat to the input dtype first (straight through
in the backward); offset 1.0 is Gemma's (1 + w). A per-head norm needs none of this (no communication).

    q_out, k_out = qk_norm_rope_tp(q, k, q_weight, k_weight, cos, sin, all_reduce=f, group_size=N)

`all_reduce(t)` must sum `t` in place over the N ranks of the group (qknorm.parallel passes a
torch.distributed one); the op itself knows nothing of process groups. Backends: "torch" (below; the CPU path,
float64 for float64 inputs) and "triton" (ops/triton_qk_norm_rope_tp.py, the fused kernels split at the
all-reduce), chosen as `qk_norm_rope` chooses. Eager mode only: the collective sits inside an
autograd.Function, which torch.compile would not trace through (it breaks the graph there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from ..config import NormCast, QKNormScope
from ..errors import ConfigError
from . import QKNumerics, _check, pick_backend
from .reference import rms_norm_rope_unchecked

__all__ = ["qk_norm_rope_tp", "qk_norm_rope_tp_unchecked"]


@dataclass(frozen=True)
class _Args:
    eps: float
    offset: float
    norm_cast: str
    width_q: int  # H*D over the whole group
    width_k: int  # Hkv*D over the whole group
    all_reduce: Callable[[torch.Tensor], None]
    backend: str  # "torch" | "triton"


# ----------------------------------------------------------------------------------------------- torch phases
def _cd(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rstd(x: torch.Tensor, s_row: torch.Tensor, width: int, eps: float) -> torch.Tensor:
    B, T = x.shape[:2]
    return torch.rsqrt(s_row.view(B, T, 1, 1) / width + eps)  # (B, T, 1, 1)


def _rope_t(dout: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """RoPE transposed: dout (B, n, T, D) -> dy (B, T, n, D) in cd; dy = dout*cos + rot^T(dout*sin)."""
    g = dout.to(cd)
    v = g * sin.to(cd).unsqueeze(-3)  # cos/sin (T, D) -> (1, T, D); (B, T, D) -> (B, 1, T, D)
    half = g.shape[-1] // 2
    return (g * cos.to(cd).unsqueeze(-3) + torch.cat((v[..., half:], -v[..., :half]), -1)).transpose(1, 2)


def _torch_sumsq(q, k, a: _Args) -> torch.Tensor:
    cd = _cd(q.dtype)
    return torch.stack([x.to(cd).pow(2).sum((-2, -1)).flatten() for x in (q, k)])  # (2, B*T)


def _each(q, k, q_weight, k_weight, a: _Args):
    return ((0, q, q_weight, a.width_q), (1, k, k_weight, a.width_k))


def _torch_norm_rope(q, k, q_weight, k_weight, cos, sin, s, a: _Args):
    out = []
    for row, x, w, width in _each(q, k, q_weight, k_weight, a):
        B, T, n, D = x.shape
        cd = _cd(x.dtype)
        xh = x.to(cd) * _rstd(x, s[row], width, a.eps)  # (B, T, n, D)
        if a.norm_cast == "input":
            xh = xh.to(x.dtype).to(cd)
        y = xh * (w.to(cd) + a.offset).view(n, D)  # gains (n*D,) -> (n, D), broadcast over (B, T)
        rope = rms_norm_rope_unchecked(y, None, cos, sin, a.eps, QKNormScope.NONE, 0.0, NormCast.FP32)
        out.append(rope.to(x.dtype))  # RoPE -> (B, n, T, D)
    return tuple(out)


def _torch_dot(dqo, dko, q, k, q_weight, k_weight, cos, sin, s, a: _Args):
    parts, cache = [], []
    for (row, x, w, width), dout in zip(_each(q, k, q_weight, k_weight, a), (dqo, dko)):
        cd = _cd(x.dtype)
        r = _rstd(x, s[row], width, a.eps)
        xh = x.to(cd) * r
        dy = _rope_t(dout, cos, sin, cd)  # (B, T, n, D)
        gy = dy * (w.to(cd) + a.offset).view(x.shape[2:])  # gains (n*D,) -> (n, D)
        parts.append((gy * xh).sum((-2, -1)).flatten())  # (B*T,)
        cache.append((r, xh, dy, gy))
    return torch.stack(parts), cache


def _torch_finish(cache, dqo, dko, q, k, q_weight, k_weight, cos, sin, s, p, a: _Args):
    grads = []
    for (row, x, w, width), (r, xh, dy, gy) in zip(_each(q, k, q_weight, k_weight, a), cache):
        cd = xh.dtype
        dx = r * (gy - xh * p[row].view(r.shape) / width)  # p (B*T,) -> (B, T, 1, 1)
        xw = xh.to(x.dtype).to(cd) if a.norm_cast == "input" else xh
        grads.append((dx.to(x.dtype), (dy * xw).sum((0, 1)).flatten().to(w.dtype)))  # dg (n, D) -> (n*D,)
    (dq, dqw), (dk, dkw) = grads
    return dq, dk, dqw, dkw


# ----------------------------------------------------------------------------------------------- triton phases
def _kernel_kw(a: _Args, *, cast: bool = True) -> dict:
    kw = dict(eps=a.eps, offset=a.offset, width_q=a.width_q, width_k=a.width_k)
    return dict(kw, norm_cast=a.norm_cast) if cast else kw


def _triton_sumsq(q, k, a):
    from .triton_qk_norm_rope_tp import sumsq_fwd

    return sumsq_fwd(q, k)


def _triton_norm_rope(q, k, q_weight, k_weight, cos, sin, s, a):
    from .triton_qk_norm_rope_tp import norm_rope_fwd

    return norm_rope_fwd(q, k, q_weight, k_weight, cos, sin, s, **_kernel_kw(a))


def _triton_dot(dqo, dko, q, k, q_weight, k_weight, cos, sin, s, a):
    from .triton_qk_norm_rope_tp import dot_bwd

    return dot_bwd(dqo, dko, q, k, q_weight, k_weight, cos, sin, s, **_kernel_kw(a, cast=False)), None


def _triton_finish(cache, dqo, dko, q, k, q_weight, k_weight, cos, sin, s, p, a):
    from .triton_qk_norm_rope_tp import norm_rope_bwd

    return norm_rope_bwd(dqo, dko, q, k, q_weight, k_weight, cos, sin, s, p, **_kernel_kw(a))


_PHASES = {  # backend -> (fwd phase 1, fwd phase 2, bwd phase 1, bwd phase 2)
    "torch": (_torch_sumsq, _torch_norm_rope, _torch_dot, _torch_finish),
    "triton": (_triton_sumsq, _triton_norm_rope, _triton_dot, _triton_finish),
}


class _QKNormRopeTP(torch.autograd.Function):
    """Two phases around one all-reduce each way; saves the inputs and the (2, B*T) all-reduced statistic."""

    @staticmethod
    def forward(ctx, q, k, q_weight, k_weight, cos, sin, a: _Args):
        sumsq, norm_rope, _, _ = _PHASES[a.backend]
        s = sumsq(q, k, a)  # (2, B*T), local heads only
        a.all_reduce(s)  # -> every head of the token
        qo, ko = norm_rope(q, k, q_weight, k_weight, cos, sin, s, a)
        ctx.save_for_backward(q, k, q_weight, k_weight, cos, sin, s)
        ctx.a = a
        return qo, ko

    @staticmethod
    @once_differentiable
    def backward(ctx, dqo, dko):
        q, k, q_weight, k_weight, cos, sin, s = ctx.saved_tensors
        a = ctx.a
        _, _, dot, finish = _PHASES[a.backend]
        B, T, H, D = q.shape
        dqo = q.new_zeros((B, H, T, D)) if dqo is None else dqo
        dko = k.new_zeros((B, k.shape[2], T, D)) if dko is None else dko
        p, cache = dot(dqo, dko, q, k, q_weight, k_weight, cos, sin, s, a)  # (2, B*T), local heads only
        a.all_reduce(p)
        dq, dk, dqw, dkw = finish(cache, dqo, dko, q, k, q_weight, k_weight, cos, sin, s, p, a)
        return dq, dk, dqw, dkw, None, None, None


def qk_norm_rope_tp(q, k, q_weight, k_weight, cos, sin, *, all_reduce: Callable[[torch.Tensor], None],
                    group_size: int, eps: float = 1e-6, offset: float = 0.0, norm_cast: str = "fp32",
                    backend=None):
    """Full-width QK-RMSNorm + RoPE of this rank's heads, with the statistic over every rank's heads.

    q (B, T, n, D), k (B, T, n_kv, D): this rank's heads (any strides). q_weight (n*D,), k_weight (n_kv*D,):
    this rank's slices of the full-width gains. cos, sin (T, D) or (B, T, D). all_reduce(t): in-place sum over
    the `group_size` ranks, each holding as many heads as this one. Returns q (B, n, T, D), k (B, n_kv, T, D),
    contiguous, input dtype. With group_size=1 and a no-op all_reduce this is qk_norm_rope(scope="full").
    Raises ConfigError naming the argument on bad input.
    """
    if q_weight is None or k_weight is None:
        raise ConfigError("qk_norm_rope_tp is the full-width norm: q_weight and k_weight must be tensors")
    norm_cast = NormCast.parse("norm_cast", norm_cast)
    _check(q, k, q_weight, k_weight, cos, sin, eps, QKNormScope.FULL, backend)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group_size={group_size!r} must be an integer >= 1 (the tensor-parallel degree)")
    if not callable(all_reduce):
        raise ConfigError(f"all_reduce must be callable (an in-place sum over the group); got {type(all_reduce)}")
    numerics = QKNumerics(eps=float(eps), scope=QKNormScope.FULL, offset=float(offset), norm_cast=norm_cast)
    return qk_norm_rope_tp_unchecked(q, k, q_weight, k_weight, cos, sin, numerics, pick_backend(q, k, backend),
                                     all_reduce=all_reduce, group_size=group_size)


def qk_norm_rope_tp_unchecked(q, k, q_weight, k_weight, cos, sin, numerics: QKNumerics, which: str, *,
                              all_reduce: Callable[[torch.Tensor], None], group_size: int):
    """`qk_norm_rope_tp` for arguments known to be valid (no parsing, no checks); `which` from `pick_backend`."""
    D = q.shape[3]
    a = _Args(eps=numerics.eps, offset=numerics.offset, norm_cast=numerics.norm_cast.value,
              width_q=q.shape[2] * D * group_size, width_k=k.shape[2] * D * group_size, all_reduce=all_reduce,
              backend=which)
    return _QKNormRopeTP.apply(q, k, q_weight, k_weight, cos, sin, a)
