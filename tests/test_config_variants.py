"""The QK-norm/RoPE variant fields (config_variants.py): one-line errors naming the field, the fused kernel and
tensor parallelism saying what they cannot serve, parameter counts of every combination, and the composed path
against independent float64 formulas (complex-number RoPE for the interleaved layout, per-head LayerNorm)."""
from __future__ import annotations

import pytest
import torch

import qknorm
from qknorm import ConfigError
from qknorm.nn.qk_path import nope_temperature, rotate
from qknorm.nn.rope import rope_tables
from qknorm.parallel.tensor import check_tp_degree


@pytest.mark.parametrize("overrides,match", [
    (dict(qk_norm_gain="per_head"), r"qk_norm_gain is set but qk_norm is 'none'"),
    (dict(qk_norm="full", qk_norm_gain="per_head"), r"qk_norm_gain='per_head' needs qk_norm='head'"),
    (dict(qk_norm="head", qk_norm_type="l2", qk_norm_gain="none"), r"qk_norm_gain='none' does not apply"),
    (dict(nope_layers=(5,)), r"nope_layers entry 5 is not a layer index in 0\.\.1"),
    (dict(nope_layers=(1, 0)), r"nope_layers=\[1, 0\] must be increasing"),
    (dict(rope_fraction=0.0), r"rope_fraction=0\.0 must be a number in \(0, 1\]"),
    (dict(rope_fraction=0.1), r"rope_fraction=0\.1 rotates int\(head_dim \* f\) = [13] dims"),
    (dict(logit_scale=0), r"logit_scale=0 must be a positive number"),
    (dict(nope_attn_scale=-1.0), r"nope_attn_scale=-1\.0 must be a positive number or None"),
    (dict(layer_types=("chunked_attention", "full_attention")), r"attention_chunk is not set"),
    (dict(qk_norm="head", qk_norm_after_rope=True, qk_backend="triton"),
     r"qk_backend='triton' is the fused.*qk_norm_after_rope=true is computed in PyTorch"),
    (dict(rope_interleaved=1), r"rope_interleaved=1 must be true or false"),
])
def test_variant_errors_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        qknorm.get_config("llama", **overrides)


def test_tensor_parallel_refuses_what_it_cannot_shard():
    with pytest.raises(ConfigError, match=r"tp=2 shards the fused QK-norm \+ RoPE path only; .*nope_layers=\[1\]"):
        check_tp_degree(qknorm.get_config("qwen3", nope_layers=(1,)), 2)
    check_tp_degree(qknorm.get_config("qwen3"), 2)  # the fused path still shards


@pytest.mark.parametrize("overrides", [
    dict(qk_norm="head", qk_norm_gain="per_head"),
    dict(qk_norm="head", qk_norm_type="layernorm", qk_norm_gain="per_head", placement="parallel",
         norm_type="layernorm", layernorm_bias=False),
    dict(qk_norm="head", qk_norm_gain="none", qk_norm_layers="rope", nope_layers=(0,), qk_norm_after_rope=True),
    dict(qk_norm="full", qk_norm_type="layernorm", qk_norm_gain="none", rope_fraction=0.5),
    dict(placement="parallel", norm_type="layernorm"),
])
def test_num_params_matches_the_built_model(overrides):
    cfg = qknorm.get_config("llama", n_layers=3, **overrides)
    assert qknorm.TransformerLM(cfg).num_params() == cfg.num_params()


def test_interleaved_partial_rope_is_the_complex_rotation_of_adjacent_pairs():
    torch.manual_seed(0)
    B, T, n, D, rd = 2, 7, 3, 12, 8
    x = torch.randn(B, T, n, D, dtype=torch.float64)
    cos, sin = rope_tables(T, rd, theta=100.0)
    out = rotate(x, cos, sin, interleaved=True)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), 1.0 / 100.0 ** (torch.arange(0, rd, 2) / rd))
    z = torch.view_as_complex(x[..., :rd].reshape(B, T, n, rd // 2, 2).contiguous())
    want = torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)[None, :, None]).flatten(-2)
    torch.testing.assert_close(out[..., :rd], want, rtol=1e-6, atol=1e-6)  # tables are fp32
    assert torch.equal(out[..., rd:], x[..., rd:])  # the rest of each head passes through


def test_nope_temperature_formula():
    got = nope_temperature(5, 6, 0.1, 4.0, "cpu")
    want = [torch.log1p(torch.floor(torch.tensor((p + 1) / 4.0))) * 0.1 + 1 for p in range(6, 11)]
    torch.testing.assert_close(got, torch.stack(want))
    assert got[0] == torch.log1p(torch.tensor(1.0)) * 0.1 + 1  # position 6: floor(7 / 4) = 1


def test_per_head_layernorm_matches_float64():
    torch.manual_seed(0)
    cfg = qknorm.get_config("llama", qk_norm="head", qk_norm_type="layernorm", qk_norm_gain="per_head")
    attn = qknorm.TransformerLM(cfg).layers[0].attn
    with torch.no_grad():
        attn.q_norm.weight.normal_()
    q = torch.randn(2, 5, cfg.n_heads, cfg.head_dim)
    x = q.double()
    ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + cfg.norm_eps)
    torch.testing.assert_close(attn.q_norm(q).double(), ref * attn.q_norm.weight.double(), rtol=1e-5, atol=1e-5)
