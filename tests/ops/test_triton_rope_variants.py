"""Every RoPE variant is just a table: the fused kernel (Triton interpreter on CPU) with each variant's cos/sin,
at positions past the variants' transitions, against the float64 HF-style reference, outputs and gradients,
under the same rule as the other kernel tests (error <= 2 x the eager torch path's error + atol); and the torch
reference path with those tables equals HF's apply_rotary_pos_emb."""
import pytest
import torch
from helpers.ops_inputs import hf_style_f64, make_inputs

from qknorm.nn.rope import rope_tables
from qknorm.rope_scaling import RopeScaling
from qknorm.ops import qk_norm_rope

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

pytest.importorskip("triton")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
VARIANTS = {
    "default": (1e4, None),
    "linear": (1e4, RopeScaling(rope_type="linear", factor=4.0)),
    "llama3_3.2": (5e5, RopeScaling(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192)),
    "yarn_qwen3": (1e6, RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=32768)),
}


def _run(backend, leaves, cos, sin, grads, **kw):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in leaves]
    qo, ko = qk_norm_rope(*leaves, cos, sin, backend=backend, **kw)
    torch.autograd.backward((qo, ko), grads)
    return [qo.detach(), ko.detach()] + [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("scope,dtype", [("head", torch.float32), ("full", torch.bfloat16), ("none", torch.float32)])
def test_kernel_with_each_variant_table(name, scope, dtype):
    theta, scaling = VARIANTS[name]
    B, T, H, Hkv, D = 2, 6, 4, 2, 64
    q, k, qw, kw, _, _ = make_inputs(B, T, H, Hkv, D, dtype, scope)
    cos, sin = rope_tables(T, D, theta=theta, scaling=scaling, offset=9000)  # far past 8192: llama3 scaled
    q, k, cos, sin = q.to(DEV), k.to(DEV), cos.to(DEV), sin.to(DEV)
    qw, kw = (qw.to(DEV), kw.to(DEV)) if qw is not None else (None, None)
    g = torch.Generator().manual_seed(3)
    gq, gk = torch.randn(B, H, T, D, generator=g).to(DEV), torch.randn(B, Hkv, T, D, generator=g).to(DEV)
    opts = dict(eps=1e-6, scope=scope, offset=0.0, norm_cast="fp32")
    got = _run("triton", (q, k, qw, kw), cos, sin, (gq.to(dtype), gk.to(dtype)), **opts)
    eager = _run("torch", (q, k, qw, kw), cos, sin, (gq.to(dtype), gk.to(dtype)), **opts)
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (q, k, qw, kw)]
    ref_q, ref_k = hf_style_f64(*leaves, cos, sin, **opts)
    torch.autograd.backward((ref_q, ref_k), (gq.double(), gk.double()))
    ref = [ref_q.detach(), ref_k.detach()] + [t.grad if t is not None else None for t in leaves]
    atol_rel = {torch.float32: 1e-6, torch.bfloat16: 1e-3}[dtype]
    for label, a, e, r in zip(["q_out", "k_out", "dq", "dk", "dq_weight", "dk_weight"], got, eager, ref):
        if r is None:
            assert a is None, label
            continue
        err, err_eager = (a.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
        atol = atol_rel * r.abs().max().item()
        assert err <= 2 * err_eager + atol, f"{name}/{label}: triton {err:.3g} > 2 x eager {err_eager:.3g} + {atol:.3g}"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_reference_path_equals_hf_rotation(name):
    """Scope none, fp32: our op with a variant's table is HF's apply_rotary_pos_emb with that table."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    theta, scaling = VARIANTS[name]
    q, k, _, _, _, _ = make_inputs(1, 5, 4, 2, 64, torch.float32, "none")
    cos, sin = rope_tables(5, 64, theta=theta, scaling=scaling, offset=9000)
    qo, ko = qk_norm_rope(q, k, None, None, cos, sin, scope="none", backend="torch")
    hq, hk = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])
    assert torch.equal(qo, hq) and torch.equal(ko, hk)
