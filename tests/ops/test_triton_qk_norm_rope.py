"""The Triton kernel (interpreted on CPU) against float64: outputs and every gradient.

Rule (flash-attn's): error(triton) <= 2 * error(eager torch path in the same dtype) + atol, errors as the
max abs difference to the float64 HF-style implementation, atol a small fraction of max |ref|.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers.ops_inputs import hf_style_f64, make_inputs

from qknorm.ops import qk_norm_rope

pytest.importorskip("triton")
from qknorm.ops.triton_qk_norm_rope import KernelConfig, set_config_override  # noqa: E402

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 2e-4}  # x max |ref|


def _run(backend, q, k, qw, kw, cos, sin, gq, gk, **kw_):
    """Forward + backward; returns (q_out, k_out, dq, dk, dqw, dkw) with the inputs as fresh leaves."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (q, k, qw, kw)]
    qo, ko = qk_norm_rope(*leaves, cos, sin, backend=backend, **kw_)
    torch.autograd.backward((qo, ko), (gq.to(qo.dtype), gk.to(ko.dtype)))
    return [qo.detach(), ko.detach()] + [t.grad if t is not None else None for t in leaves]


def _reference_f64(q, k, qw, kw, cos, sin, gq, gk, **kw_):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (q, k, qw, kw)]
    qo, ko = hf_style_f64(*leaves, cos, sin, **kw_)  # float64 math, no rounding emulated
    torch.autograd.backward((qo, ko), (gq.double(), gk.double()))
    return [qo.detach(), ko.detach()] + [t.grad if t is not None else None for t in leaves]


def check_against_f64(B, T, H, Hkv, D, dtype, scope, offset=0.0, norm_cast="fp32", wdtype=torch.float32,
                      batched_cos=False):
    q, k, qw, kw, cos, sin = make_inputs(B, T, H, Hkv, D, dtype, scope, wdtype=wdtype, batched_cos=batched_cos)
    q, k, cos, sin = q.to(DEV), k.to(DEV), cos.to(DEV), sin.to(DEV)
    qw, kw = (qw.to(DEV), kw.to(DEV)) if qw is not None else (None, None)
    g = torch.Generator().manual_seed(7)
    gq = torch.randn(B, H, T, D, generator=g).to(DEV)
    gk = torch.randn(B, Hkv, T, D, generator=g).to(DEV)
    kw_ = dict(eps=1e-6, scope=scope, offset=offset, norm_cast=norm_cast)
    q0, k0 = q.clone(), k.clone()
    got = _run("triton", q, k, qw, kw, cos, sin, gq, gk, **kw_)
    eager = _run("torch", q, k, qw, kw, cos, sin, gq, gk, **kw_)
    ref = _reference_f64(q, k, qw, kw, cos, sin, gq, gk, **kw_)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    names = ["q_out", "k_out", "dq", "dk", "dq_weight", "dk_weight"]
    for name, a, e, r in zip(names, got, eager, ref):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == e.dtype and a.shape == e.shape, name
        err = (a.double() - r).abs().max().item()
        err_eager = (e.double() - r).abs().max().item()
        atol = ATOL[a.dtype] * r.abs().max().item()
        assert err <= 2 * err_eager + atol, f"{name}: triton {err:.3g} > 2 x eager {err_eager:.3g} + {atol:.3g}"
    assert got[0].is_contiguous() and got[1].is_contiguous()


CASES = [  # (B, T, H, Hkv, D, dtype, scope, offset, norm_cast)
    (2, 7, 4, 2, 64, torch.float32, "head", 0.0, "fp32"),
    (2, 7, 4, 2, 64, torch.bfloat16, "head", 0.0, "input"),  # Qwen3
    (1, 5, 4, 1, 80, torch.bfloat16, "head", 1.0, "fp32"),  # Gemma 3, MQA, D not a power of 2
    (2, 3, 6, 2, 96, torch.float32, "head", 1.0, "input"),  # 6 heads: masked head axis
    (2, 7, 4, 2, 128, torch.bfloat16, "full", 0.0, "fp32"),  # OLMo 2
    (1, 5, 4, 1, 80, torch.float32, "full", 1.0, "input"),
    (2, 3, 6, 3, 64, torch.float16, "full", 0.0, "fp32"),
    (1, 3, 2, 2, 256, torch.bfloat16, "head", 0.0, "fp32"),
    (2, 7, 4, 2, 64, torch.bfloat16, "none", 0.0, "fp32"),  # RoPE only
    (1, 5, 4, 1, 96, torch.float32, "none", 0.0, "fp32"),
]


@pytest.mark.parametrize("B,T,H,Hkv,D,dtype,scope,offset,norm_cast", CASES)
def test_triton_matches_float64(B, T, H, Hkv, D, dtype, scope, offset, norm_cast):
    check_against_f64(B, T, H, Hkv, D, dtype, scope, offset, norm_cast)


@pytest.mark.parametrize("scope", ["head", "full"])
def test_triton_bf16_weights_and_batched_cos(scope):
    check_against_f64(2, 5, 4, 2, 64, torch.bfloat16, scope, 1.0, "input", wdtype=torch.bfloat16, batched_cos=True)


@pytest.mark.parametrize("scope", ["head", "full", "none"])
def test_triton_multi_block_programs(scope):
    """Small token blocks: blocks straddle the batch boundary, the last is partial, and each backward
    program loops over several blocks (the weight-gradient accumulators carry across iterations)."""
    set_config_override(fwd=KernelConfig(2, 2), bwd=KernelConfig(4, 2))
    check_against_f64(3, 5, 4, 2, 64, torch.float32, scope, 0.0, "fp32")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(B=st.integers(1, 2), T=st.integers(1, 6), H=st.integers(1, 5), hk_div=st.integers(1, 3),
       half=st.integers(1, 20), scope=st.sampled_from(["head", "full", "none"]))
def test_triton_odd_shapes(B, T, H, hk_div, half, scope):
    Hkv = max(1, H // hk_div)
    check_against_f64(B, T, H, Hkv, 2 * half, torch.float32, scope, 0.5, "fp32")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA GPU")
@pytest.mark.parametrize("scope", ["head", "full"])
@pytest.mark.parametrize("D", [64, 128, 256])
def test_triton_gpu_realistic_shapes(scope, D):
    check_against_f64(2, 1000, 16, 4, D, torch.bfloat16, scope, 0.0, "input")
