"""Fused QK-RMSNorm + RoPE: one entry point, checked arguments, backend dispatch.

    q_out, k_out = qk_norm_rope(q, k, q_weight, k_weight, cos, sin, eps=1e-6, scope="head")
    # q (B, T, H, D), k (B, T, Hkv, D)  ->  q_out (B, H, T, D), k_out (B, Hkv, T, D), ready for SDPA

Backends: "torch" (ops/reference.py, plain PyTorch; the CPU path) and "triton" (ops/triton_qk_norm_rope.py
through the torch.library op in ops/op.py, so torch.compile keeps the kernel). backend=None picks "triton"
for CUDA tensors when triton imports and the shape fits the kernel, else "torch". Triton is imported only
when the triton backend runs, so `import qknorm` works without it.

Checked once: `qk_norm_rope` parses its enums and checks every argument, then calls `qk_norm_rope_unchecked`
with a `QKNumerics` (the resolved eps, scope, offset and norm cast). Callers that resolved their numerics
already (an attention layer does at construction; the tensor-parallel op after its own checks) call
`qk_norm_rope_unchecked` directly: no parsing and no argument checks per call, only the backend choice.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from ..config import NormCast, QKNormScope
from ..errors import ConfigError
from .reference import qk_norm_rope_ref, qk_norm_rope_ref_unchecked

__all__ = ["qk_norm_rope", "qk_norm_rope_ref", "triton_available", "SCOPES", "NORM_CASTS", "BACKENDS",
           "QKNumerics", "ROPE_ONLY", "qk_norm_rope_unchecked", "pick_backend"]

SCOPES = tuple(m.value for m in QKNormScope)
NORM_CASTS = tuple(m.value for m in NormCast)
BACKENDS = (None, "torch", "triton")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_REF_DTYPES = _KERNEL_DTYPES + (torch.float64,)
MAX_TILE = 16384  # padded heads * padded head_dim per token that one kernel program holds


@dataclass(frozen=True)
class QKNumerics:
    """The op's numerics, resolved: what `qk_norm_rope` makes of its eps/scope/offset/norm_cast arguments once.

    scope NONE means RoPE only (the weights are then None)."""

    eps: float
    scope: QKNormScope
    offset: float
    norm_cast: NormCast


ROPE_ONLY = QKNumerics(eps=1e-6, scope=QKNormScope.NONE, offset=0.0, norm_cast=NormCast.FP32)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def triton_available() -> bool:
    """True when triton imports (the kernel module itself is imported only on first use)."""
    try:
        import triton  # noqa: F401  (present and importable is the question)
    except Exception:
        return False
    return True


def _interpreting() -> bool:
    """Whether the kernels run in the Triton interpreter: decided when they were decorated, else by the env."""
    mod = sys.modules.get(__name__ + ".triton_qk_norm_rope")
    if mod is not None:
        return type(mod._qk_norm_rope_fwd_kernel).__name__ == "InterpretedFunction"
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernel_fits(q: torch.Tensor, k: torch.Tensor) -> bool:
    D = q.shape[-1]
    return _next_pow2(max(q.shape[2], k.shape[2])) * _next_pow2(D) <= MAX_TILE and q.dtype in _KERNEL_DTYPES


def _check(q, k, q_weight, k_weight, cos, sin, eps, scope: QKNormScope, backend) -> QKNormScope:
    """Validate the arguments (scope parsed already); return the effective scope (NONE when no weights are
    given)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not allowed; choose one of None, 'torch', 'triton'")
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4 or k.dim() != 4:
        raise ConfigError(f"q and k must be 4-D (B, T, heads, head_dim); got q {tuple(q.shape)}, k {tuple(k.shape)}")
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    if k.shape[0] != B or k.shape[1] != T or k.shape[3] != D:
        raise ConfigError(f"k {tuple(k.shape)} must match q {tuple(q.shape)} in B, T and head_dim")
    if D % 2 or D == 0:
        raise ConfigError(f"head_dim (q.shape[3]) must be even for rotate-half RoPE; got {D}")
    if q.dtype != k.dtype or q.dtype not in _REF_DTYPES:
        raise ConfigError(f"q and k must share one dtype of float32, bfloat16, float16 (float64 for backend "
                          f"'torch'); got q {q.dtype}, k {k.dtype}")
    if cos.shape != sin.shape or cos.shape[-2:] != (T, D) or cos.dim() not in (2, 3) or (
            cos.dim() == 3 and cos.shape[0] not in (1, B)):
        raise ConfigError(f"cos and sin must both be (T, D)=({T}, {D}) or (B, T, D); got cos {tuple(cos.shape)}, "
                          f"sin {tuple(sin.shape)}")
    if not (cos.is_floating_point() and sin.is_floating_point()):
        raise ConfigError(f"cos and sin must be floating point; got {cos.dtype}, {sin.dtype}")
    devices = {t.device for t in (q, k, cos, sin, q_weight, k_weight) if t is not None}
    if len(devices) > 1:
        raise ConfigError(f"q, k, weights, cos and sin must be on one device; got {sorted(map(str, devices))}")
    if not (float(eps) >= 0.0):
        raise ConfigError(f"eps must be >= 0; got {eps}")
    if (q_weight is None) != (k_weight is None):
        raise ConfigError("q_weight and k_weight must both be tensors (QK-norm) or both be None (RoPE only)")
    if q_weight is None:
        return QKNormScope.NONE
    if scope is QKNormScope.NONE:
        raise ConfigError("scope='none' applies no norm: pass q_weight=None and k_weight=None, "
                          "or choose scope 'head' or 'full'")
    want_q, want_k = ((D,), (D,)) if scope is QKNormScope.HEAD else ((H * D,), (Hkv * D,))
    if tuple(q_weight.shape) != want_q or tuple(k_weight.shape) != want_k:
        raise ConfigError(f"for scope={scope.value!r}, q_weight must be {want_q} and k_weight {want_k}; got "
                          f"{tuple(q_weight.shape)} and {tuple(k_weight.shape)}")
    if not (q_weight.is_floating_point() and k_weight.is_floating_point()):
        raise ConfigError(f"q_weight and k_weight must be floating point; got {q_weight.dtype}, {k_weight.dtype}")
    return scope


def pick_backend(q, k, backend) -> str:
    """The backend that runs these tensors, "torch" or "triton": backend None picks; an explicit "triton"
    raises ConfigError when it cannot run them."""
    if backend == "torch":
        return "torch"
    if backend is None:
        ok = q.is_cuda and _kernel_fits(q, k) and triton_available()
        return "triton" if ok else "torch"
    # backend == "triton", asked for explicitly
    if not triton_available():
        raise ConfigError("backend='triton' needs the triton package (pip install triton); use backend='torch'")
    if not (q.is_cuda or (q.device.type == "cpu" and _interpreting())):
        raise ConfigError(f"backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
                          f"before triton is imported; got device {q.device}")
    if q.dtype not in _KERNEL_DTYPES:
        raise ConfigError(f"backend='triton' supports float32, bfloat16, float16; got {q.dtype}")
    if not _kernel_fits(q, k):
        raise ConfigError(f"backend='triton' holds at most {MAX_TILE} padded values of one token's heads; "
                          f"got {max(q.shape[2], k.shape[2])} heads of {q.shape[3]}: use backend='torch'")
    return "triton"


def qk_norm_rope(q, k, q_weight, k_weight, cos, sin, *, eps=1e-6, scope: QKNormScope | str = "head", offset=0.0,
                 norm_cast: NormCast | str = "fp32", backend=None):
    """QK-RMSNorm (per head, or over the full projection width) then rotate-half RoPE, then (B, heads, T, D).

    q (B, T, H, D), k (B, T, Hkv, D): any strides (views of a projection output, slices of a fused qkv).
    q_weight/k_weight: (D,) for scope "head", (H*D,)/(Hkv*D,) for scope "full"; both None = RoPE only.
    cos, sin: (T, D) (or (B, T, D) for per-sequence positions), rotate-half layout, any float dtype.
    offset: scale = offset + weight in fp32 (1.0 for Gemma 3). norm_cast: "fp32" multiplies the weight in
    fp32 (OLMo 2, Gemma 3); "input" rounds the normalized x to the input dtype first (Llama, Qwen3).
    Returns contiguous q (B, H, T, D), k (B, Hkv, T, D) in the input dtype; inputs are never modified.
    Raises ConfigError naming the argument on bad input.
    """
    scope = QKNormScope.parse("scope", scope)  # the config's enums, or their string values
    norm_cast = NormCast.parse("norm_cast", norm_cast)
    scope = _check(q, k, q_weight, k_weight, cos, sin, eps, scope, backend)
    numerics = QKNumerics(eps=float(eps), scope=scope, offset=float(offset), norm_cast=norm_cast)
    if scope is QKNormScope.NONE:
        q_weight = k_weight = None
    return qk_norm_rope_unchecked(q, k, q_weight, k_weight, cos, sin, numerics, pick_backend(q, k, backend))


def qk_norm_rope_unchecked(q, k, q_weight, k_weight, cos, sin, numerics: QKNumerics, which: str):
    """`qk_norm_rope` for arguments known to be valid: no parsing, no checks. `which`: "torch" or "triton" (from
    `pick_backend`); weights None exactly when numerics.scope is NONE."""
    if which == "torch":
        return qk_norm_rope_ref_unchecked(q, k, q_weight, k_weight, cos, sin, numerics.eps, numerics.scope,
                                          numerics.offset, numerics.norm_cast)
    from .op import qk_norm_rope_op

    return qk_norm_rope_op(q, k, q_weight, k_weight, cos, sin, numerics.eps, numerics.scope.value, numerics.offset,
                           numerics.norm_cast.value)
