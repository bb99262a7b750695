"""Diagnostics: the stats pass against explicit computation, run summaries, verdicts, JSON round trips."""

import math

import pytest
import torch
import torch.nn.functional as F

import qknorm
from qknorm import diagnostics as D
from qknorm.nn.attention import causal_mask


def _explicit_max_logits(model, ids):
    """Per-layer max of scale * q.k over causal pairs, recomputed with forward hooks on the projections."""
    maxes = []
    x = model.embed(ids)
    T = ids.shape[1]
    cos, sin = model.rope_global(T, ids.device)
    for layer in model.layers:
        h = layer.attn_norm_in(x)
        a = layer.attn
        B = h.shape[0]
        q = a.q_proj(h).view(B, T, a.n_heads, a.head_dim)
        k = a.k_proj(h).view(B, T, a.n_kv_heads, a.head_dim)
        q, k = a.qk_norm_rope(q, k, cos, sin)  # (B, H, T, D), (B, Hkv, T, D)
        k = k.repeat_interleave(a.n_heads // a.n_kv_heads, dim=1)
        s = (q @ k.transpose(2, 3)) * a.scale  # (B, H, T, T)
        maxes.append(s.masked_fill(~causal_mask(T, None, ids.device), -math.inf).amax().item())
        x = layer(x, (cos, sin))
    return maxes


@pytest.mark.parametrize("preset", ["llama", "qwen3"])
def test_stats_pass_matches_explicit_scores(preset):
    torch.manual_seed(0)
    model = qknorm.TransformerLM(qknorm.get_config(preset, "debug"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "q_proj" in n or "k_proj" in n:
                p.mul_(8)  # grow the logits so the check is not trivially near zero
    ids = torch.randint(0, 256, (3, 40))
    stats = D.stats_pass(model, ids)
    with torch.no_grad():
        want = _explicit_max_logits(model, ids)
        logits = model(ids)
    assert stats.attn_logit_per_layer == pytest.approx(want, rel=1e-4)
    assert stats.max_attn_logit == max(stats.attn_logit_per_layer)
    assert all(b >= m for b, m in zip(stats.attn_bound_per_layer, stats.attn_logit_per_layer))
    assert stats.logit_max == pytest.approx(logits.max().item())
    assert stats.logit_std == pytest.approx(logits.std().item(), rel=1e-5)
    assert len(stats.q_rms) == len(stats.k_rms) == model.config.n_layers
    if preset == "qwen3":  # unit QK-norm gains: RMS 1 after the norm, RoPE rotates without scaling
        assert stats.q_rms == pytest.approx([1.0, 1.0], abs=1e-3)
    assert not any(layer.attn.qk_probes() for layer in model.layers)  # the recording probes removed again


def _explicit_entropies(model, ids):
    """Per-layer mean attention entropy in float64 from explicit scores (softcapped as the layer does), as
    logsumexp(s) - sum p s over the allowed keys of each query."""
    out = []
    x = model.embed(ids)
    B, T = ids.shape
    cos, sin = model.rope_global(T, ids.device)
    allowed = causal_mask(T, None, ids.device)
    for layer in model.layers:
        a = layer.attn
        h = layer.attn_norm_in(x)
        q = a.q_proj(h).view(B, T, a.n_heads, a.head_dim)
        k = a.k_proj(h).view(B, T, a.n_kv_heads, a.head_dim)
        q, k = a.qk_norm_rope(q, k, cos, sin)  # (B, H, T, D), (B, Hkv, T, D)
        k = k.repeat_interleave(a.n_heads // a.n_kv_heads, dim=1)
        s = (q.double() @ k.double().transpose(2, 3)) * a.scale  # (B, H, T, T)
        if a.softcap is not None:
            s = torch.tanh(s / a.softcap) * a.softcap
        s = s.masked_fill(~allowed, -math.inf)
        p = torch.softmax(s, -1)
        ent = torch.logsumexp(s, -1) - (p * s.masked_fill(~allowed, 0.0)).sum(-1)  # (B, H, T)
        out.append(ent.mean().item())
        x = layer(x, (cos, sin))
    return out


@pytest.mark.parametrize("overrides", [{}, {"attn_softcap": 2.0}])
def test_stats_pass_entropy_and_log_z_match_explicit_float64(overrides):
    """The per-layer attention entropy (with the layer's softcap) and the mean output log Z, against float64."""
    torch.manual_seed(1)
    model = qknorm.TransformerLM(qknorm.get_config("llama", "debug", **overrides))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "q_proj" in n or "k_proj" in n:
                p.mul_(8)  # peaked attention: entropies well away from the uniform value
    ids = torch.randint(0, 256, (3, 24))
    stats = D.stats_pass(model, ids)
    with torch.no_grad():
        want = _explicit_entropies(model, ids)
        log_z = torch.logsumexp(model(ids).double(), dim=-1).mean().item()
    assert stats.attn_entropy_per_layer == pytest.approx(want, rel=1e-4)
    assert stats.attn_entropy == pytest.approx(sum(want) / len(want), rel=1e-4)
    assert stats.log_z == pytest.approx(log_z, rel=1e-6)
    uniform = sum(math.log(t + 1) for t in range(24)) / 24
    assert all(0 < e < uniform for e in want)  # peaked, not uniform: the check is not vacuous


def test_stats_pass_sliding_layers_and_rows():
    model = qknorm.TransformerLM(qknorm.get_config("gemma3", "debug"))
    stats = D.stats_pass(model, torch.randint(0, 256, (1, 24)))
    rows = D.layer_rows(model, stats)
    assert [r["type"] for r in rows] == ["sliding", "sliding", "full"]
    assert tuple(r["max_attn_logit"] for r in rows) == stats.attn_logit_per_layer


def test_logit_verdict_thresholds():
    assert D.logit_verdict(12.3).endswith("12.3: bounded")
    assert "elevated" in D.logit_verdict(70)
    assert "attention-logit growth; consider QK-norm" in D.logit_verdict(385)
    assert "despite QK-norm" in D.logit_verdict(385, qk_norm=True)
    assert "severe" in D.logit_verdict(25581) and "Wortsman" in D.logit_verdict(25581)
    assert "non-finite" in D.logit_verdict(math.inf)


def test_nonfinite_to_none_for_strict_json():
    rec = {"loss": math.nan, "q_rms": [1.0, math.inf], "step": 3, "skipped": True}
    out = D.nonfinite_to_none(rec)
    assert out == {"loss": None, "q_rms": [1.0, None], "step": 3, "skipped": True}


def test_z_loss_term_matches_definition():
    from qknorm.train.step import forward_loss as _forward_loss

    torch.manual_seed(0)
    model = qknorm.TransformerLM(qknorm.get_config("llama", "debug"))
    x, y = torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))
    ce, z = _forward_loss(model, x, y, 1e-4)
    logits = model(x).view(-1, 256)
    assert ce.item() == pytest.approx(F.cross_entropy(logits, y.view(-1)).item())
    assert z.item() == pytest.approx(1e-4 * torch.logsumexp(logits, -1).pow(2).mean().item())
    assert _forward_loss(model, x, y, 0.0)[1] is None


def test_stats_pass_under_bf16_autocast_computes_the_scores_in_fp32():
    """The training loop runs the stats pass under the run's autocast. The projections then give bf16 q/k (what
    the model attends with); the max logit must be computed from those in fp32, not by a bf16 matmul: it is
    compared with a float64 recomputation from the same bf16 q/k (a bf16 result is off by up to 2^-8 relative)."""
    torch.manual_seed(0)
    model = qknorm.TransformerLM(qknorm.get_config("llama", "debug"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "q_proj" in n or "k_proj" in n:
                p.mul_(8)
    ids = torch.randint(0, 256, (2, 40))

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    stats = D.stats_pass(model, ids, autocast=bf16)
    want = []
    with torch.no_grad(), bf16():
        x = model.embed(ids)
        T = ids.shape[1]
        cos, sin = model.rope_global(T, ids.device)
        for layer in model.layers:
            a, h = layer.attn, layer.attn_norm_in(x)
            q = a.q_proj(h).view(2, T, a.n_heads, a.head_dim)
            k = a.k_proj(h).view(2, T, a.n_kv_heads, a.head_dim)
            q, k = a.qk_norm_rope(q, k, cos, sin)  # (B, H, T, D), (B, Hkv, T, D) in bf16
            assert q.dtype == torch.bfloat16
            k = k.repeat_interleave(a.n_heads // a.n_kv_heads, dim=1)
            with torch.autocast("cpu", enabled=False):
                s = (q.double() @ k.double().transpose(2, 3)) * a.scale  # (B, H, T, T) float64
            want.append(s.masked_fill(~causal_mask(T, None, ids.device), -math.inf).amax().item())
            x = layer(x, (cos, sin))
    assert stats.attn_logit_per_layer == pytest.approx(want, rel=1e-5)
