"""The QK-norm types against float64 formulas: LayerNorm (no bias), L2 with its temperature (logits bounded by it,
initial logits those of RMS QK-norm with unit gains), and the config rules around them."""
import pytest
import torch

import qknorm
from qknorm import ConfigError, get_config
from qknorm.nn.attention import Attention, head_max_logits
from qknorm.nn.qk_norm import QKL2Norm, QKLayerNorm, l2_initial_temperature
from qknorm.nn.rope import rope_tables

torch.set_num_threads(1)  # 2-core CI runs two test workers


def _run(attn, x, cfg):
    cos, sin = rope_tables(x.shape[1], cfg.head_dim, theta=cfg.rope_theta)
    return attn(x, cos, sin)


def _q_k(attn, x, cfg):
    """q (B, H, T, D), k (B, Hkv, T, D) after the layer's QK-norm and RoPE."""
    B, T, _ = x.shape
    cos, sin = rope_tables(T, cfg.head_dim, theta=cfg.rope_theta)
    q = attn.q_proj(x).view(B, T, cfg.n_heads, cfg.head_dim)
    k = attn.k_proj(x).view(B, T, cfg.n_kv_heads, cfg.head_dim)
    return attn.qk_norm_rope(q, k, cos, sin)


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_layernorm_matches_float64_formula(full, offset):
    torch.manual_seed(0)
    n, D = 3, 8
    norm = QKLayerNorm(n * D if full else D, full=full, eps=1e-6, offset=offset)
    with torch.no_grad():
        norm.weight.normal_(0.5, 0.3)
    x = torch.randn(2, 5, n, D) * 4 + 1.5
    xd = x.double().reshape(2, 5, n * D) if full else x.double()
    mu, var = xd.mean(-1, keepdim=True), xd.var(-1, unbiased=False, keepdim=True)
    ref = ((xd - mu) / torch.sqrt(var + 1e-6) * (norm.weight.double() + offset)).view(2, 5, n, D)
    torch.testing.assert_close(norm(x).double(), ref, rtol=1e-5, atol=1e-5)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]  # gain only: no bias


@pytest.mark.parametrize("scope", ["head", "full"])
def test_l2_logits_are_bounded_by_the_temperature(scope):
    cfg = get_config("llama", "debug", qk_norm=scope, qk_norm_type="l2", attn_impl="eager")
    torch.manual_seed(0)
    attn = Attention(cfg, 0)
    assert attn.scale == 1.0 and attn.q_norm.temperature.shape == (cfg.n_heads,)
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj):
            lin.weight.normal_(0, 30.0)  # projections that would make plain logits explode
        attn.q_norm.temperature.copy_(torch.tensor([0.5, 3.0, 7.0, 20.0])[: cfg.n_heads])
    x = torch.randn(4, 24, cfg.d_model)
    q, k = _q_k(attn, x, cfg)
    m = head_max_logits(q, k, attn.scale, None)
    t = attn.q_norm.temperature.detach()
    assert (m <= t * (1 + 1e-5)).all(), (m, t)
    # the bound is the whole multiplier: aligned q and k reach it (a token attending to itself at position 0)
    qn, kn = attn.q_norm(torch.ones(1, 1, cfg.n_heads, cfg.head_dim)), attn.k_norm(torch.ones(1, 1, cfg.n_kv_heads,
                                                                                               cfg.head_dim))
    g = cfg.n_heads // cfg.n_kv_heads
    dots = (qn[0, 0] * kn[0, 0].repeat_interleave(g, 0)).sum(-1)  # (H,)
    expect = t if scope == "head" else t / (cfg.n_heads * cfg.n_kv_heads) ** 0.5
    torch.testing.assert_close(dots, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scope", ["head", "full"])
@pytest.mark.parametrize("preset", ["llama", "gemma3"])
def test_l2_starts_as_rms_qk_norm_with_unit_gains(scope, preset):
    """Henry et al.'s temperature, initialised here so the initial logits are those of unit-RMS q.k * scale."""
    over = dict(qk_norm=scope, norm_offset=0.0) if preset == "llama" else dict(qk_norm=scope)
    rms_cfg = get_config(preset, "debug", **over)
    l2_cfg = rms_cfg.replace(qk_norm_type="l2")
    torch.manual_seed(1)
    rms = Attention(rms_cfg, 0)
    l2 = Attention(l2_cfg, 0)
    l2.load_state_dict({k: v for k, v in rms.state_dict().items() if "norm" not in k}, strict=False)
    x = torch.randn(2, 12, rms_cfg.d_model)
    torch.testing.assert_close(_run(l2, x, l2_cfg), _run(rms, x, rms_cfg), rtol=2e-4, atol=2e-5)
    heads = rms_cfg.n_heads * rms_cfg.n_kv_heads if scope == "full" else 1
    assert l2_initial_temperature(l2_cfg) == pytest.approx(rms_cfg.query_scale * rms_cfg.head_dim * heads ** 0.5)


@pytest.mark.parametrize("qk_type", ["layernorm", "l2"])
@pytest.mark.parametrize("scope", ["head", "full"])
def test_models_of_each_type_train_and_count_their_parameters(qk_type, scope):
    cfg = get_config("qwen3", "debug", qk_norm=scope, qk_norm_type=qk_type)
    model = qknorm.TransformerLM(cfg)
    assert model.num_params() == cfg.num_params()
    ids = torch.randint(0, 256, (2, 16))
    model(ids).float().logsumexp(-1).mean().backward()
    norm = model.layers[0].attn.q_norm
    assert isinstance(norm, QKL2Norm if qk_type == "l2" else QKLayerNorm)
    grad = norm.temperature.grad if qk_type == "l2" else norm.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert qknorm.ModelConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["qk_norm_type"] == qk_type


@pytest.mark.parametrize("overrides, message", [
    (dict(qk_norm_type="cosine"), "qk_norm_type='cosine' is not allowed; choose one of: rms, layernorm, l2"),
    (dict(qk_norm_type="l2"), "qk_norm_type='l2' needs qk_norm='head' or 'full'"),
    (dict(qk_norm="head", qk_norm_type="layernorm", qk_backend="triton"),
     "qk_backend='triton' is the fused RMSNorm kernel; qk_norm_type='layernorm' runs in PyTorch"),
    (dict(sigma_reparam="yes"), "sigma_reparam='yes' must be true or false"),
])
def test_bad_qk_norm_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        get_config("llama", "debug", **overrides)
    assert message in str(e.value) and "\n" not in str(e.value)
