"""clip_qkv (OLMo 1, OLMoE): q, k and v clamped to [-c, c] after their projections (OLMoE: after its full-width
QK-norm, before RoPE), and OLMo 1's non-parametric LayerNorms. Tiny random transformers models whose clip is
small enough that the clamp acts (asserted on transformers' own projections), logits within 1e-6 of
transformers' SDPA path, and the clamp matters (the same weights without it are far off; bf16: test_hf_parity.py).
The export round trip of each runs in test_hf_roundtrip.py (the `variant` fixture covers `olmo`, `olmo_tied` and `olmoe_clip`).
"""
from __future__ import annotations

import pytest
import torch

import qknorm
from qknorm import ConfigError
from qknorm.interop.hf_config import hf_config_from_ours
from qknorm.nn.qk_fused import QKFused
from qknorm.nn.qk_path import QKComposed

from helpers.hf_models import input_ids, make_hf, rel_err

pytestmark = pytest.mark.numerics


def _clamped_fraction(hf, ids) -> float:
    """Of the values transformers clamps (q/k/v projections; OLMoE: q and k after its q/k norms), the fraction
    outside [-c, c] before the clamp, from forward hooks on transformers' own modules."""
    c, seen = hf.config.clip_qkv, []
    attn = hf.model.layers[0].self_attn
    mods = [getattr(attn, "q_norm", attn.q_proj), getattr(attn, "k_norm", attn.k_proj), attn.v_proj]
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out.detach().clone())) for m in mods]
    try:
        with torch.no_grad():
            hf(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return float(torch.cat([t.flatten() for t in seen]).abs().gt(c).float().mean())


@pytest.mark.parametrize("name", ["olmo", "olmoe_clip"])
def test_clip_qkv_models_match_transformers_and_the_clamp_acts(name):
    hf = make_hf(name, attn="sdpa")
    ours = qknorm.from_hf(hf)
    assert ours.config.clip_qkv == hf.config.clip_qkv
    ids = input_ids(length=64)
    assert _clamped_fraction(hf, ids) > 0.1  # measured: olmo 0.48, olmoe_clip 0.36
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        assert rel_err(ours(ids), ref) < 1e-6, rel_err(ours(ids), ref)
        other = qknorm.TransformerLM(ours.config.replace(clip_qkv=None))
        other.load_state_dict(ours.state_dict())
        assert rel_err(other(ids), ref) > 1e-3


def test_olmo_config_reads_as_olmo_1():
    c = qknorm.from_hf(make_hf("olmo")).config
    assert (c.norm_type.value, c.layernorm_weight, c.layernorm_bias, c.norm_eps) == ("layernorm", False, False, 1e-5)
    assert (c.qk_norm.value, c.placement.value, c.attention_bias, c.o_proj_bias) == ("none", "pre", True, True)
    assert c.clip_qkv == 0.5 and qknorm.from_hf(make_hf("olmo_tied")).config.clip_qkv is None
    assert not [k for k in qknorm.from_hf(make_hf("olmo")).state_dict() if "norm" in k]


def test_clip_qkv_is_refused_where_transformers_has_no_clamp_and_checked():
    with pytest.raises(ConfigError, match=r"clip_qkv=0 must be a positive number"):
        qknorm.ModelConfig(clip_qkv=0)
    with pytest.raises(ConfigError, match="layernorm_weight=false needs layernorm_bias=false"):
        qknorm.ModelConfig(norm_type="layernorm", layernorm_weight=False)
    with pytest.raises(ConfigError, match="layernorm_weight=false applies to norm_type='layernorm' only"):
        qknorm.ModelConfig(layernorm_weight=False, layernorm_bias=False)
    with pytest.raises(ConfigError, match=r"clip_qkv=8\.0 \(llama has no q/k/v clamping"):
        hf_config_from_ours(qknorm.get_config("llama", "debug", clip_qkv=8.0))
    with pytest.raises(qknorm.CheckpointError, match=r"clip_qkv=-1 is not supported"):
        qknorm.interop.hf_config.config_from_hf({**make_hf("olmo").config.to_dict(), "clip_qkv": -1})


def test_full_width_qk_norm_outside_the_fused_op_is_the_fused_function():
    """A clip no value reaches moves the full-width QK-norm out of the fused op (nn/qk_path.py) and changes
    nothing else; before QKFullRMSNorm, that path normalized (B, T, n, D) with a (n*D,) gain and raised."""
    cfg = qknorm.get_config("olmo2", "debug")
    fused = qknorm.TransformerLM(cfg)
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    composed = qknorm.TransformerLM(cfg.replace(clip_qkv=1e9))
    composed.load_state_dict(fused.state_dict())
    assert isinstance(fused.layers[0].attn.qk_path, QKFused)
    assert isinstance(composed.layers[0].attn.qk_path, QKComposed)
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(composed(ids), fused(ids), rtol=1e-5, atol=1e-5)
