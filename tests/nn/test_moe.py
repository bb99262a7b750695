"""The mixture-of-experts MLP against a float64 dense reference (every expert on every token, weighted by the
routing mask), gradients included; its config fields' errors and parameter count."""
from __future__ import annotations

import pytest
import torch

from qknorm import ConfigError, ModelConfig, TransformerLM
from qknorm.nn.moe import MoEMLP


def _reference(m: MoEMLP, x: torch.Tensor, k: int, norm: bool) -> torch.Tensor:
    """Dense float64 form (routing probabilities in fp32): softmax over experts, keep the top k (optionally renormalized), sum every expert."""
    x = x.double().reshape(-1, x.shape[-1])
    # (N, E); as the families do, the routing weights are fp32 whatever the model's dtype
    p = torch.softmax(x @ m.router.weight.double().T, dim=-1, dtype=torch.float32)
    top = torch.topk(p, k, dim=-1)
    w = torch.zeros_like(p).scatter(1, top.indices, top.values)
    if norm:
        w = w / w.sum(-1, keepdim=True)
    w = w.double()
    g, u, dn = (t.double() for t in (m.gate_proj, m.up_proj, m.down_proj))
    h = torch.nn.functional.silu(torch.einsum("nd,efd->nef", x, g)) * torch.einsum("nd,efd->nef", x, u)
    y = torch.einsum("nef,edf->ned", h, dn)  # (N, E, d)
    return (w[..., None] * y).sum(1)


@pytest.mark.parametrize("k,norm", [(1, False), (2, True), (3, False)])
def test_moe_equals_dense_float64_reference_with_gradients(k, norm):
    c = ModelConfig(d_model=16, n_heads=2, d_ff=24, n_experts=4, experts_per_token=k, norm_topk_prob=norm)
    torch.manual_seed(0)
    m = MoEMLP(c).double()
    m.reset_parameters(0.3, 2)
    x = torch.randn(2, 24, 16, dtype=torch.float64, requires_grad=True)
    out = m(x)
    ref = _reference(m, x, k, norm).view_as(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out)
    g_out = torch.autograd.grad((out * w).sum(), [x, m.gate_proj, m.down_proj, m.router.weight])
    g_ref = torch.autograd.grad((ref * w).sum(), [x, m.gate_proj, m.down_proj, m.router.weight])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert m.router.weight.grad is None and g_out[3].abs().sum() > 0  # the router learns through the weights


def test_sigmoid_router_with_shared_expert_equals_float64_reference():
    """Llama 4's rule: top-k of the logits, sigmoid of each chosen logit scaling that expert's input, plus a shared
    expert on every token (float64 dense reference: every expert on its scaled input, masked)."""
    c = ModelConfig(d_model=16, n_heads=2, d_ff=24, n_experts=4, experts_per_token=2, moe_d_ff=12,
                    moe_router="sigmoid", moe_shared_expert=True)
    torch.manual_seed(0)
    m = MoEMLP(c).double()
    m.reset_parameters(0.3, 2)
    with torch.no_grad():
        for p in m.shared.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(2, 24, 16, dtype=torch.float64)
    flat = x.reshape(-1, 16)
    logits = flat @ m.router.weight.T  # (N, E)
    top = torch.topk(logits, 2, dim=-1)
    sig = torch.sigmoid(top.values.float()).double()  # in fp32 whatever the dtype, as Llama 4 computes it
    s = torch.zeros_like(logits).scatter(1, top.indices, sig)  # (N, E), 0 where unchosen
    xs = s[..., None] * flat[:, None, :]  # (N, E, d): each expert's scaled input
    h = torch.nn.functional.silu(torch.einsum("ned,efd->nef", xs, m.gate_proj)) * \
        torch.einsum("ned,efd->nef", xs, m.up_proj)
    routed = (torch.einsum("nef,edf->ned", h, m.down_proj) * (s > 0)[..., None]).sum(1)  # (N, d)
    ref = m.shared(flat) + routed
    torch.testing.assert_close(m(x), ref.view_as(x), rtol=1e-12, atol=1e-12)
    assert c.num_params() == sum(p.numel() for p in TransformerLM(c).parameters())


def test_sparse_layers_and_parameter_count():
    c = ModelConfig(vocab_size=32, d_model=16, n_layers=4, n_heads=2, d_ff=24, n_experts=3, experts_per_token=2,
                    moe_d_ff=8, moe_every=2, dense_layers=[3])
    model = TransformerLM(c)
    assert [type(b.mlp).__name__ for b in model.layers] == ["GatedMLP", "MoEMLP", "GatedMLP", "GatedMLP"]
    assert model.num_params() == c.num_params()
    assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("fields,match", [
    (dict(n_experts=2, experts_per_token=3), "experts_per_token=3 must be <= n_experts=2"),
    (dict(moe_shared_expert=True), "moe_shared_expert is set but n_experts is 0"),
    (dict(n_experts=2, moe_router="sigmoid", norm_topk_prob=True), "norm_topk_prob=true renormalizes softmax"),
    (dict(moe_d_ff=8), "moe_d_ff is set but n_experts is 0"),
    (dict(n_experts=2, dense_layers=[5]), "dense_layers entry 5"),
    (dict(n_experts=-1), "n_experts=-1 must be an integer >= 0"),
    (dict(n_experts=2, sigma_reparam=True), "sigma_reparam=true has no mixture-of-experts form"),
])
def test_moe_config_errors_name_the_field(fields, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(n_layers=2, **fields)


def test_tensor_parallel_refuses_experts_in_one_line():
    from qknorm.parallel.tensor import check_tp_degree

    with pytest.raises(ConfigError, match="n_experts=2 is not supported with tp=2"):
        check_tp_degree(ModelConfig(n_layers=2, n_experts=2), 2, world_size=2)
