"""The contenders of `qknorm bench kernel`, each a function (q, k, q_weight, k_weight, cos, sin) -> (q_out, k_out)
with q (B, T, H, D), k (B, T, Hkv, D) in and (B, H, T, D), (B, Hkv, T, D) out:

  eager         HF-style PyTorch: Qwen3RMSNorm per head (scope head) or Olmo2RMSNorm over the projection
                (scope full), then apply_rotary_pos_emb with cos/sin in the input dtype, as HF passes them
  compile       torch.compile of eager (Inductor; the real baseline of a fused kernel)
  liger         Liger-Kernel's RMSNorm + RoPE kernels (when importable; EXTRA_SITE=dir adds a folder)
  ours          qknorm.ops.qk_norm_rope(backend="triton"): the public op, autograd included
  ours_compile  torch.compile of ours (the op stays one graph node)
and `ours_kernels`, our forward and backward kernels launched directly (no autograd, no op dispatch): the
device-side cost; `ours` minus it is host time.

The floor is a copy of the same bytes with torch: the forward must read q and k and write outputs of the
same size (one copy of q+k); the backward reads q, k and the output gradients and writes dq, dk (a copy of
1.5x q+k). RMSNorm numerics per scope follow the preset families: head = Qwen3 (norm_cast "input"), full =
OLMo 2 (norm_cast "fp32").
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Optional, Tuple

import torch

from ..nn.rope import rope_tables

EPS = 1e-6
THETA = 1e6
NORM_CAST = {"head": "input", "full": "fp32"}


@dataclasses.dataclass(frozen=True)
class Inputs:
    """One (shape, scope) case: inputs in the benchmark dtype, output gradients, RoPE tables."""

    q: torch.Tensor  # (B, T, H, D)
    k: torch.Tensor  # (B, T, Hkv, D)
    qw: torch.Tensor  # (D,) or (H*D,)
    kw: torch.Tensor  # (D,) or (Hkv*D,)
    cos: torch.Tensor  # (T, D) fp32, what ours takes
    sin: torch.Tensor
    cos_in: torch.Tensor  # (1, T, D) in the input dtype, what the HF-style code and Liger take
    sin_in: torch.Tensor
    gq: torch.Tensor  # (B, H, T, D) gradient of q_out
    gk: torch.Tensor  # (B, Hkv, T, D)
    scope: str

    @property
    def nbytes(self) -> int:
        return (self.q.numel() + self.k.numel()) * self.q.element_size()


def make_inputs(shape, scope: str, device: str, dtype=torch.bfloat16) -> Inputs:
    B, T, H, Hkv, D = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, T, H, D, generator=g).to(device, dtype)
    k = torch.randn(B, T, Hkv, D, generator=g).to(device, dtype)
    nq, nk = (D, D) if scope == "head" else (H * D, Hkv * D)
    qw = (torch.rand(nq, generator=g) + 0.5).to(device, dtype)
    kw = (torch.rand(nk, generator=g) + 0.5).to(device, dtype)
    cos, sin = rope_tables(T, D, theta=THETA, device=device)  # (T, D) fp32
    gq = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    gk = torch.randn(B, Hkv, T, D, generator=g).to(device, dtype)
    return Inputs(q, k, qw, kw, cos, sin, cos[None].to(dtype), sin[None].to(dtype), gq, gk, scope)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), -1)


def eager(q, k, qw, kw, cos, sin, scope):
    """HF style (see the module docstring); cos/sin (1, T, D)."""

    def norm(x, w):
        B, T, n, D = x.shape
        dt = x.dtype
        h = (x.reshape(B, T, n * D) if scope == "full" else x).float()  # (B, T, n*D) for OLMo 2's full width
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
        h = w * h.to(dt) if scope == "head" else (w * h).to(dt)
        return h.view(B, T, n, D)

    q, k = norm(q, qw).transpose(1, 2), norm(k, kw).transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, T, D)
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def ours(q, k, qw, kw, cos, sin, scope):
    from ..ops import qk_norm_rope

    return qk_norm_rope(q, k, qw, kw, cos, sin, eps=EPS, scope=scope, norm_cast=NORM_CAST[scope], backend="triton")


def load_liger() -> Tuple[Optional[Callable], str]:
    """(make(qw, kw, scope) -> contender, or None; a note on why not). EXTRA_SITE adds a folder to sys.path."""
    extra = os.environ.get("EXTRA_SITE")
    if extra and extra not in sys.path:
        sys.path.insert(0, extra)
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
    except Exception as e:  # noqa: BLE001  (not installed, or built for another torch)
        return None, f"Liger-Kernel not importable: {repr(e)[:120]}"

    def make(qw, kw, scope):
        qn = LigerRMSNorm(qw.numel(), eps=EPS).to(qw)
        kn = LigerRMSNorm(kw.numel(), eps=EPS).to(kw)
        with torch.no_grad():
            qn.weight.copy_(qw)
            kn.weight.copy_(kw)

        def liger(q, k, qw_, kw_, cos, sin, scope_):
            B, T, H, D = q.shape
            Hkv = k.shape[2]
            if scope == "full":  # (B, T, H*D) rows, as OLMo 2
                q = qn(q.reshape(B, T, H * D)).view(B, T, H, D)
                k = kn(k.reshape(B, T, Hkv * D)).view(B, T, Hkv, D)
            else:
                q, k = qn(q), kn(k)
            return liger_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)

        return liger

    return make, ""


def kernel_fns(x: Inputs):
    """(forward, forward+backward) thunks of our two kernels launched directly."""
    from ..ops import triton_qk_norm_rope as K

    args = (x.q, x.k, x.qw, x.kw, x.cos, x.sin, EPS, x.scope, 0.0, NORM_CAST[x.scope])
    return (lambda: K.qk_norm_rope_fwd(*args),
            lambda: (K.qk_norm_rope_fwd(*args), K.qk_norm_rope_bwd(x.gq, x.gk, *args)))


def floor_fns(x: Inputs):
    """(forward floor, forward+backward floor) thunks: torch copies of the bytes each pass must move."""
    n = x.q.numel() + x.k.numel()
    dt, dev = x.q.dtype, x.q.device
    src, dst = torch.ones(n, dtype=dt, device=dev), torch.empty(n, dtype=dt, device=dev)
    src2, dst2 = torch.ones(n + n // 2, dtype=dt, device=dev), torch.empty(n + n // 2, dtype=dt, device=dev)
    return (lambda: dst.copy_(src)), (lambda: (dst.copy_(src), dst2.copy_(src2)))


def fwd_bwd_fn(fn, x: Inputs, fp32_tables: bool):
    """(forward thunk, forward+backward thunk) of a contender; gradients reset to None each call."""
    c, s = (x.cos, x.sin) if fp32_tables else (x.cos_in, x.sin_in)
    leaves = [t.detach().clone().requires_grad_() for t in (x.q, x.k, x.qw, x.kw)]

    def fwd():
        with torch.no_grad():
            return fn(x.q, x.k, x.qw, x.kw, c, s, x.scope)

    def fwd_bwd():
        for t in leaves:
            t.grad = None  # time the gradients, not their accumulation
        a, b = fn(*leaves, c, s, x.scope)
        torch.autograd.backward((a, b), (x.gq, x.gk))

    return fwd, fwd_bwd


def rel_error(fn, x: Inputs, fp32_tables: bool) -> float:
    """max over q_out, k_out of |out - ref| / |ref| (Frobenius), ref = the eager code in fp32."""
    with torch.no_grad():
        ref = eager(x.q.float(), x.k.float(), x.qw.float(), x.kw.float(), x.cos[None], x.sin[None], x.scope)
        c, s = (x.cos, x.sin) if fp32_tables else (x.cos_in, x.sin_in)
        got = fn(x.q, x.k, x.qw, x.kw, c, s, x.scope)
    return max(((o.float() - r).norm() / r.norm()).item() for o, r in zip(got, ref))
