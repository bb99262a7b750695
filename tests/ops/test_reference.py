"""The plain-PyTorch reference against an independent float64 HF-style implementation."""
import pytest
import torch
from helpers.ops_inputs import hf_style_f64, make_inputs

from qknorm.ops import qk_norm_rope_ref

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

# (B, T, H, Hkv, D, dtype, scope, offset, norm_cast): sparse over the axes, every value of each at least once
CASES = [
    (2, 7, 4, 2, 64, torch.float32, "head", 0.0, "fp32"),
    (2, 7, 4, 2, 64, torch.bfloat16, "head", 0.0, "input"),
    (1, 5, 4, 1, 80, torch.float32, "head", 1.0, "fp32"),  # MQA, Gemma offset
    (2, 3, 4, 2, 96, torch.bfloat16, "full", 0.0, "fp32"),  # OLMo 2
    (1, 9, 2, 2, 128, torch.float32, "full", 1.0, "input"),
    (1, 4, 4, 2, 256, torch.bfloat16, "head", 1.0, "fp32"),
    (2, 5, 6, 3, 64, torch.float16, "full", 0.0, "input"),
    (2, 7, 4, 2, 64, torch.float32, "none", 0.0, "fp32"),
    (2, 7, 4, 1, 80, torch.bfloat16, "none", 0.0, "fp32"),
]
TOL = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}  # relative to max |ref|


@pytest.mark.parametrize("B,T,H,Hkv,D,dtype,scope,offset,norm_cast", CASES)
def test_reference_matches_hf_style_float64(B, T, H, Hkv, D, dtype, scope, offset, norm_cast):
    q, k, qw, kw, cos, sin = make_inputs(B, T, H, Hkv, D, dtype, scope)
    kw_ = dict(eps=1e-6, scope=scope, offset=offset, norm_cast=norm_cast)
    got_q, got_k = qk_norm_rope_ref(q, k, qw, kw, cos, sin, **kw_)
    ref_q, ref_k = hf_style_f64(q, k, qw, kw, cos, sin, round_to=dtype, **kw_)
    assert got_q.shape == (B, H, T, D) and got_k.shape == (B, Hkv, T, D)
    assert got_q.dtype == dtype and got_q.is_contiguous() and got_k.is_contiguous()
    for got, ref in ((got_q, ref_q), (got_k, ref_k)):
        torch.testing.assert_close(got.double(), ref, rtol=0, atol=TOL[dtype] * ref.abs().max().item())


def test_reference_float64_is_exact_to_hf_style():
    q, k, qw, kw, cos, sin = make_inputs(2, 5, 4, 2, 64, torch.float64, "full", wdtype=torch.float64)
    got = qk_norm_rope_ref(q, k, qw, kw, cos, sin, scope="full", offset=1.0)
    ref = hf_style_f64(q, k, qw, kw, cos, sin, scope="full", offset=1.0)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_reference_batched_cos_sin():
    q, k, qw, kw, cos, sin = make_inputs(3, 6, 4, 2, 64, torch.float32, "head", batched_cos=True)
    assert cos.shape == (3, 6, 64)
    got = qk_norm_rope_ref(q, k, qw, kw, cos, sin)
    ref = hf_style_f64(q, k, qw, kw, cos, sin)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5)


def test_reference_gradients_match_float64():
    q, k, qw, kw, cos, sin = make_inputs(2, 5, 4, 2, 80, torch.float32, "head")
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, qw, kw)]
    leaves64 = [t.detach().double().requires_grad_() for t in (q, k, qw, kw)]
    g = torch.Generator().manual_seed(3)
    gq, gk = torch.randn(2, 4, 5, 80, generator=g), torch.randn(2, 2, 5, 80, generator=g)
    torch.autograd.backward(qk_norm_rope_ref(*leaves, cos, sin, offset=1.0), (gq, gk))
    torch.autograd.backward(hf_style_f64(*leaves64, cos, sin, offset=1.0), (gq.double(), gk.double()))
    for a, b in zip(leaves, leaves64):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-5)
