"""The full correctness matrix of the Triton QK-RMSNorm + RoPE against float64, forward and every gradient (dq,
dk, dq_weight, dk_weight): dtype fp32/bf16/fp16 x scope head/full x offset 0/1 x norm_cast fp32/input x
head_dim 64/80/128/256 x GQA/MQA, with T prime (B*T not a multiple of any token block) and q, k as strided
slices of one fused qkv projection.

On a CUDA GPU every case runs (`pytest -m gpu`: 192 cases). Without one, the same test code runs a subset
that covers every value of every axis (CPU_SUBSET) through the Triton interpreter, so the matrix code itself
is proven in normal CI; the other cases are marked gpu and skipped with the reason.

Tolerance (flash-attn's rule): max |triton - float64| <= 2 x max |torch reference in the same dtype - float64|
+ ATOL x max |float64|, per output and per gradient.
"""
import itertools

import pytest
import torch
from helpers.ops_inputs import hf_style_f64, make_inputs

from qknorm.ops import qk_norm_rope

pytest.importorskip("triton")

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 2e-4}  # x max |float64 reference|
HEADS = {"gqa": (6, 2), "mqa": (4, 1)}  # (H, Hkv); 6 heads also pad the head axis to 8
# tokens: T prime, B*T not a multiple of any token block. On a GPU enough tokens that every persistent backward
# program loops over several blocks; under the interpreter (3 backward programs) a few dozen do that already.
B, T = (2, 1337) if HAS_CUDA else (1, 13)
MATRIX = list(itertools.product(DTYPES, ("head", "full"), (0.0, 1.0), ("fp32", "input"), (64, 80, 128, 256), HEADS))
CPU_SUBSET = [  # every value of every axis at least once; Qwen3-, Gemma 3- and OLMo 2-like rows included
    ("fp32", "head", 0.0, "fp32", 64, "gqa"),
    ("bf16", "head", 0.0, "input", 128, "gqa"),  # Qwen3
    ("bf16", "head", 1.0, "fp32", 256, "mqa"),  # Gemma 3
    ("bf16", "full", 0.0, "fp32", 128, "gqa"),  # OLMo 2
    ("fp16", "full", 1.0, "input", 80, "mqa"),
]


def _cases():
    for case in MATRIX:
        on_cpu = not HAS_CUDA and case in CPU_SUBSET
        yield pytest.param(*case, marks=[] if on_cpu else [pytest.mark.gpu], id="-".join(map(str, case)))


def _fwd_bwd(fn, leaves, cos, sin, gq, gk, **kw):
    qo, ko = fn(*leaves, cos, sin, **kw)
    torch.autograd.backward((qo, ko), (gq.to(qo.dtype), gk.to(ko.dtype)))
    return [qo.detach(), ko.detach()] + [t.grad for t in leaves]


def _leaves(ts, dtype=None):
    return [t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in ts]


def check_case(dtype, scope, offset, norm_cast, D, heads):
    dt = DTYPES[dtype]
    H, Hkv = HEADS[heads]
    q, k, qw, kw, cos, sin = make_inputs(B, T, H, Hkv, D, dt, scope, wdtype=dt)
    q, k, qw, kw, cos, sin = (t.to(DEV) for t in (q, k, qw, kw, cos, sin))
    assert not q.is_contiguous() and not k.is_contiguous()  # slices of one (B, T, (H+2Hkv)*D) projection
    g = torch.Generator().manual_seed(1)
    gq, gk = torch.randn(B, H, T, D, generator=g).to(DEV), torch.randn(B, Hkv, T, D, generator=g).to(DEV)
    kw_ = dict(eps=1e-6, scope=scope, offset=offset, norm_cast=norm_cast)
    inputs = (q, k, qw, kw)
    got = _fwd_bwd(qk_norm_rope, _leaves(inputs), cos, sin, gq, gk, backend="triton", **kw_)
    eager = _fwd_bwd(qk_norm_rope, _leaves(inputs), cos, sin, gq, gk, backend="torch", **kw_)
    ref = _fwd_bwd(hf_style_f64, _leaves(inputs, torch.float64), cos, sin, gq.double(), gk.double(), **kw_)
    for name, a, e, r in zip(("q_out", "k_out", "dq", "dk", "dq_weight", "dk_weight"), got, eager, ref):
        assert a.dtype == e.dtype and a.shape == e.shape and torch.isfinite(a).all(), name
        err = (a.double() - r).abs().max().item()
        err_eager = (e.double() - r).abs().max().item()
        atol = ATOL[a.dtype] * r.abs().max().item()
        assert err <= 2 * err_eager + atol, f"{name}: triton {err:.3g} > 2 x torch {err_eager:.3g} + {atol:.3g}"


@pytest.mark.parametrize("dtype,scope,offset,norm_cast,D,heads", list(_cases()))
def test_triton_matrix_against_float64(dtype, scope, offset, norm_cast, D, heads):
    check_case(dtype, scope, offset, norm_cast, D, heads)


def test_cpu_subset_covers_every_axis():
    """The CI subset exercises every value of every axis of the GPU matrix."""
    assert set(CPU_SUBSET) <= set(MATRIX)
    for axis, values in enumerate(zip(*MATRIX)):
        assert {c[axis] for c in CPU_SUBSET} == set(values), axis
