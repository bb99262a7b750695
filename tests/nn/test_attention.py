"""Attention against an independent float64 reference: sliding windows, GQA, QK-norm before RoPE, scale, softcap."""
import math

import pytest
import torch

from qknorm import get_config
from qknorm.nn.attention import Attention
from qknorm.nn.attention_probes import StatsProbe

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels


def ref_rope(x, theta, scaling=1.0):
    """x (B, H, T, D) float64; rotate-half RoPE computed from the formula with float64 angles."""
    B, H, T, D = x.shape
    out = torch.empty_like(x)
    half = D // 2
    for t in range(T):
        for i in range(half):
            ang = (t / scaling) * theta ** (-2.0 * i / D)
            c, s = math.cos(ang), math.sin(ang)
            a, b = x[:, :, t, i], x[:, :, t, i + half]
            out[:, :, t, i] = a * c - b * s
            out[:, :, t, i + half] = b * c + a * s
    return out


def ref_rms(x, w, eps, offset):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (offset + w)


def ref_attention(attn: Attention, x, cfg, *, window=None, theta=None, order="norm_then_rope"):
    """Float64 attention following the published formulas with an explicit loop-built mask."""
    d = torch.float64
    B, T, _ = x.shape
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    x = x.to(d)
    q = x @ attn.q_proj.weight.to(d).T
    k = x @ attn.k_proj.weight.to(d).T
    v = (x @ attn.v_proj.weight.to(d).T).view(B, T, Hkv, D).transpose(1, 2)

    def norm(t, module, heads):
        if module is None:
            return t.view(B, T, heads, D).transpose(1, 2)
        w = module.weight.to(d)
        if cfg.qk_norm.value == "full":
            return ref_rms(t, w, cfg.norm_eps, cfg.norm_offset).view(B, T, heads, D).transpose(1, 2)
        return ref_rms(t.view(B, T, heads, D), w, cfg.norm_eps, cfg.norm_offset).transpose(1, 2)

    theta = theta or cfg.rope_theta
    if order == "norm_then_rope":
        q, k = ref_rope(norm(q, attn.q_norm, H), theta), ref_rope(norm(k, attn.k_norm, Hkv), theta)
    else:  # the wrong order, to show the test can tell them apart
        q = norm(ref_rope(q.view(B, T, H, D).transpose(1, 2), theta).transpose(1, 2).reshape(B, T, -1), attn.q_norm, H)
        k = norm(ref_rope(k.view(B, T, Hkv, D).transpose(1, 2), theta).transpose(1, 2).reshape(B, T, -1), attn.k_norm, Hkv)
    g = H // Hkv
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scale = (cfg.query_pre_attn_scalar or D) ** -0.5
    s = q @ k.transpose(-1, -2) * scale
    if cfg.attn_softcap:
        s = torch.tanh(s / cfg.attn_softcap) * cfg.attn_softcap
    mask = torch.zeros(T, T, dtype=torch.bool)
    for qi in range(T):
        for ki in range(T):
            mask[qi, ki] = ki <= qi and (window is None or qi - window < ki)
    s = s.masked_fill(~mask, float("-inf"))
    o = torch.softmax(s, -1) @ v  # (B, H, T, D)
    return o.transpose(1, 2).reshape(B, T, H * D) @ attn.o_proj.weight.to(d).T


def make(cfg, layer=0, seed=0):
    torch.manual_seed(seed)
    attn = Attention(cfg, layer)
    with torch.no_grad():
        for p in attn.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
        for m in (attn.q_norm, attn.k_norm):
            if m is not None:
                m.weight.copy_(torch.rand_like(m.weight) * 1.5 + 0.25 - m.offset)  # non-unit gains
    return attn


def run(attn, x, cfg, theta=None):
    from qknorm.nn.rope import rope_tables

    cos, sin = rope_tables(x.shape[1], cfg.head_dim, theta=theta or cfg.rope_theta)
    return attn(x, cos, sin)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("scope", ["none", "head", "full"])
def test_matches_float64_reference(impl, scope):
    cfg = get_config("qwen3", "debug", qk_norm=scope, attn_impl=impl, norm_cast="fp32")
    attn = make(cfg)
    x = torch.randn(2, 11, cfg.d_model)
    torch.testing.assert_close(run(attn, x, cfg).double(), ref_attention(attn, x, cfg), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("T,W", [(40, 16), (17, 1), (33, 32)])
def test_sliding_window_equals_dense_with_explicit_mask(impl, T, W):
    cfg = get_config("gemma3", "debug", sliding_window=W, attn_impl=impl)
    assert cfg.resolved_layer_types()[0] == "sliding_attention"
    attn = make(cfg, layer=0)
    assert attn.window == W
    x = torch.randn(2, T, cfg.d_model)
    out = run(attn, x, cfg)
    torch.testing.assert_close(out.double(), ref_attention(attn, x, cfg, window=W), rtol=1e-4, atol=1e-4)
    # and it really differs from full causal attention when T > W
    assert (out.double() - ref_attention(attn, x, cfg, window=None)).abs().max() > 1e-3


def test_gemma_layer_pattern():
    cfg = get_config("gemma3", "1b")
    types = cfg.resolved_layer_types()
    assert [i for i, t in enumerate(types) if t == "full_attention"] == [5, 11, 17, 23]
    assert Attention(get_config("gemma3", "debug"), 2).window is None  # (2+1) % 3 == 0 -> global


@pytest.mark.parametrize("scope", ["none", "head", "full"])
@pytest.mark.parametrize("n_kv", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_heads(scope, n_kv):
    cfg = get_config("llama", "debug", qk_norm=scope, n_kv_heads=n_kv)
    gqa = make(cfg)
    mha_cfg = cfg.replace(n_kv_heads=cfg.n_heads)
    mha = Attention(mha_cfg, 0)
    g, D = cfg.n_heads // n_kv, cfg.head_dim
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(n_kv, D, -1).repeat_interleave(g, 0).reshape(-1, cfg.d_model)
            getattr(mha, name).weight.copy_(w)
        if scope != "none":
            mha.q_norm.weight.copy_(gqa.q_norm.weight)
            kw = gqa.k_norm.weight
            mha.k_norm.weight.copy_(kw.view(n_kv, D).repeat_interleave(g, 0).flatten() if scope == "full" else kw)
    x = torch.randn(2, 9, cfg.d_model)
    torch.testing.assert_close(run(gqa, x, cfg), run(mha, x, mha_cfg), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scope", ["head", "full"])
def test_qk_norm_is_applied_before_rope_with_non_unit_gains(scope):
    cfg = get_config("olmo2", "debug", qk_norm=scope)
    attn = make(cfg)
    x = torch.randn(2, 13, cfg.d_model)
    out = run(attn, x, cfg).double()
    right = ref_attention(attn, x, cfg)
    wrong = ref_attention(attn, x, cfg, order="rope_then_norm")
    torch.testing.assert_close(out, right, rtol=1e-4, atol=1e-4)
    assert (out - wrong).abs().max() > 100 * (out - right).abs().max()


def test_query_pre_attn_scalar_and_softcap():
    cfg = get_config("gemma3", "debug", query_pre_attn_scalar=7.0, attn_softcap=3.0)
    attn = make(cfg, layer=2)  # global layer
    assert attn.eager and abs(attn.scale - 7.0 ** -0.5) < 1e-12
    x = torch.randn(2, 10, cfg.d_model)
    torch.testing.assert_close(run(attn, x, cfg).double(), ref_attention(attn, x, cfg), rtol=1e-4, atol=1e-4)


def test_sdpa_equals_eager():
    cfg = get_config("olmo2", "debug")
    a = make(cfg)
    b = Attention(cfg.replace(attn_impl="eager"), 0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 21, cfg.d_model)
    torch.testing.assert_close(run(a, x, cfg), run(b, x, cfg), rtol=1e-5, atol=1e-5)


def test_recorded_max_logit_is_exact_and_bound_holds():
    cfg = get_config("llama", "debug")
    attn = make(cfg)
    x = torch.randn(2, 12, cfg.d_model)
    probe = StatsProbe()
    handle = attn.add_qk_probe(probe)
    run(attn, x, cfg)
    handle.remove()
    # independent: recompute scores from the reference pieces
    d = torch.float64
    B, T, H, D = 2, 12, cfg.n_heads, cfg.head_dim
    q = ref_rope((x.to(d) @ attn.q_proj.weight.to(d).T).view(B, T, H, D).transpose(1, 2), cfg.rope_theta)
    k = ref_rope((x.to(d) @ attn.k_proj.weight.to(d).T).view(B, T, -1, D).transpose(1, 2), cfg.rope_theta)
    k = k.repeat_interleave(H // cfg.n_kv_heads, 1)
    s = (q @ k.transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    assert abs(probe.stats["max_logit"].item() - s.max().item()) < 1e-3 * max(1.0, s.max().abs().item())
    assert probe.stats["logit_bound"].item() >= s.max().item()
    assert attn.qk_probes() == ()  # removed


@pytest.mark.parametrize("window", [None, 5])
def test_head_max_logits_match_float64_per_head_in_any_block_size(window):
    from qknorm.nn.attention import head_max_logits

    torch.manual_seed(3)
    B, H, Hkv, T, D = 2, 6, 2, 13, 8
    q, k = torch.randn(B, H, T, D) * 3, torch.randn(B, Hkv, T, D) * 3
    qd, kd = q.double(), k.double().repeat_interleave(H // Hkv, 1)  # head h uses kv head h // (H / Hkv)
    s = qd @ kd.transpose(-1, -2) * 0.3  # (B, H, T, T)
    allowed = torch.tensor([[j <= i and (window is None or i - window < j) for j in range(T)] for i in range(T)])
    ref = s.masked_fill(~allowed, float("-inf")).amax(dim=(0, 2, 3))
    for max_elements in (1 << 24, 100):  # one block, and a block of one query row at a time
        got = head_max_logits(q, k, 0.3, window, max_elements=max_elements)
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    running = torch.full((H,), 1e3)
    assert torch.equal(head_max_logits(q, k, 0.3, window, running), running)  # folds into a running max
    # cached decoding: the last 4 queries against all 13 keys
    ref_last = s[:, :, -4:].masked_fill(~allowed[-4:], float("-inf")).amax(dim=(0, 2, 3))
    torch.testing.assert_close(head_max_logits(q[:, :, -4:], k, 0.3, window).double(), ref_last, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("cap", [2.0, 5.0])
def test_softcap_bounds_the_logits_by_the_cap(cap):
    """Probabilities read out through v = identity: log p_ij - log p_ik = s_ij - s_ik, so with every capped
    logit in [-cap, cap] the log-probabilities of a row spread by at most 2 * cap; uncapped they do not."""
    cfg = get_config("llama", "debug", n_kv_heads=4)
    torch.manual_seed(0)
    T, D = 12, cfg.head_dim
    q, k = torch.randn(1, 4, T, D) * 6, torch.randn(1, 4, T, D) * 6  # raw logits of order +-100
    v = torch.eye(T, D).expand(1, 4, T, D)  # (B, H, T, D): row t of the output holds the probabilities
    spread = {}
    for name, c in (("capped", cap), ("plain", None)):
        attn = Attention(cfg.replace(attn_softcap=c, attn_impl="eager"), 0)
        probs = attn._attend_eager(q, k, v)[..., :T].double()  # (1, H, T, T)
        logp = probs.clamp_min(1e-300).log()
        rows = [logp[..., i, : i + 1] for i in range(1, T)]  # the allowed keys of query i
        spread[name] = max((r.amax(-1) - r.amin(-1)).max().item() for r in rows)
    assert spread["capped"] <= 2 * cap * (1 + 1e-5), spread  # = 2 cap here: tanh saturates at +-1 in fp32
    assert spread["plain"] > 10 * cap, spread  # the same scores without the cap


@pytest.mark.parametrize("window", [None, 4])
def test_attention_entropy_of_uniform_attention_is_log_of_the_keys_seen(window):
    """q = 0 makes every allowed key equally likely: query t sees min(t + 1, W) keys, so its entropy is the log of
    that count (an analytic value, independent of the code)."""
    from qknorm.nn.attention import attention_stats

    B, H, T, D = 2, 3, 10, 8
    stats = attention_stats(torch.zeros(B, H, T, D), torch.randn(B, H, T, D), 0.5, window)
    want = sum(math.log(min(t + 1, window or T)) for t in range(T)) / T
    assert stats["entropy"].item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("softcap, window", [(None, None), (3.0, None), (None, 5), (3.0, 5)])
def test_attention_entropy_matches_float64_per_row(softcap, window):
    """Mean over batch, heads and queries of -sum p log p, against float64 rows computed one at a time as
    H = logsumexp(s) - sum p s (another identity than the code's), with the layer's softcap and window; GQA."""
    from qknorm.nn.attention import attention_stats

    torch.manual_seed(4)
    B, H, Hkv, T, D = 2, 4, 2, 9, 8
    q, k = torch.randn(B, H, T, D) * 2, torch.randn(B, Hkv, T, D) * 2
    kd = k.double().repeat_interleave(H // Hkv, 1)
    rows = []
    for b in range(B):
        for h in range(H):
            for t in range(T):
                keys = [j for j in range(T) if j <= t and (window is None or t - window < j)]
                s = q[b, h, t].double() @ kd[b, h, keys].T * 0.4
                if softcap is not None:
                    s = torch.tanh(s / softcap) * softcap
                p = torch.softmax(s, 0)
                rows.append((torch.logsumexp(s, 0) - (p * s).sum()).item())
    got = attention_stats(q, k, 0.4, window, softcap)["entropy"].item()
    assert got == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    if softcap is not None:  # capping flattens the scores: the entropy is higher than without the cap
        assert got > attention_stats(q, k, 0.4, window)["entropy"].item()
