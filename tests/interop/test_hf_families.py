"""The families whose QK-norm or RoPE is a variant (config_variants.py): exact logits against transformers, and
each variant field really matters (the same weights with the field set back to the plain value are far off).

Tiny random models of olmo3, cohere, stablelm, exaone4, hunyuan_v1_dense and dense llama4_text, every norm weight
and bias randomized (helpers/hf_models.py), T=64 past their windows (8) and chunks (8). The export round trip of
each runs in test_hf_roundtrip.py (the `variant` fixture covers them); stage-by-stage parity in test_hf_parity.py.
"""
from __future__ import annotations

import pytest
import torch

import qknorm
from qknorm import ConfigError

from helpers.hf_models import input_ids, make_hf, rel_err

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

FAMILIES = ["olmo3", "cohere", "cohere_no_qk_untied", "stablelm", "stablelm_parallel", "exaone4", "hunyuan_v1_dense",
            "llama4_text"]
# bit-identical to transformers' SDPA path; cohere's LayerNorm (explicit mean/variance vs torch's layer_norm) and
# Llama 4's complex-number RoPE round differently, within 1e-6 relative (measured: 4.6e-7 and 3.7e-7)
BITWISE = {"olmo3", "stablelm", "stablelm_parallel", "exaone4", "hunyuan_v1_dense"}
# each field, and the plain value it takes when the variant is undone (a field at its plain value is not tried)
PLAIN = dict(rope_interleaved=False, qk_norm_after_rope=False, nope_layers=(), rope_fraction=1.0, logit_scale=1.0,
             nope_attn_scale=None, rope_local_theta=None, rope_scaling=None)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_logits_match_transformers_and_each_variant_matters(name):
    hf = make_hf(name, attn="sdpa")
    ours = qknorm.from_hf(hf)
    ids = input_ids(length=64)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        out = ours(ids)
        assert torch.equal(out, ref) if name in BITWISE else rel_err(out, ref) < 1e-6, rel_err(out, ref)
        c, tried = ours.config, []
        # a weightless per-head norm commutes with RoPE (a rotation keeps each head's norm): Llama 4's placement
        # after RoPE is the same function as before it (to rounding), so that field is not a variant there
        commutes = {"qk_norm_after_rope"} if c.qk_norm_gain.value == "none" else set()
        changes = [{f: v} for f, v in PLAIN.items() if getattr(c, f) != v and f not in commutes]
        if c.layer_types is not None or c.sliding_window is not None:
            changes.append(dict(layer_types=None, sliding_window=None, attention_chunk=None))
        for change in changes:
            try:
                cfg = c.replace(**change)
            except ConfigError:
                continue
            other = qknorm.TransformerLM(cfg)
            other.load_state_dict(ours.state_dict())
            assert rel_err(other(ids), ref) > 1e-4, change
            tried.append(change)
    assert tried, f"{name}: no variant field to check"


def test_family_configs_are_what_the_model_cards_say():
    """The translation is not trivial: the fields each family's HF config implies."""
    c = qknorm.from_hf(make_hf("cohere")).config
    assert (c.placement.value, c.norm_type.value, c.layernorm_bias, c.rope_interleaved) == \
        ("parallel", "layernorm", False, True)
    assert (c.qk_norm.value, c.qk_norm_type.value, c.qk_norm_gain.value, c.logit_scale) == \
        ("head", "layernorm", "per_head", 0.25)
    s = qknorm.from_hf(make_hf("stablelm")).config
    assert (s.rope_fraction, s.placement.value, s.attention_bias, s.o_proj_bias) == (0.25, "pre", True, False)
    assert qknorm.from_hf(make_hf("stablelm_parallel")).config.placement.value == "parallel"
    e = qknorm.from_hf(make_hf("exaone4")).config
    assert e.nope_layers == (1, 3) and e.resolved_layer_types()[1] == "full_attention" and e.norm_cast.value == "input"
    h = qknorm.from_hf(make_hf("hunyuan_v1_dense")).config
    assert h.qk_norm_after_rope and h.rope_theta == 1e4 * 1000.0 ** (16 / 14) and h.rope_scaling is None
    lm = qknorm.from_hf(make_hf("llama4_text")).config
    assert lm.nope_layers == (1, 3) and lm.qk_norm_layers.value == "rope" and lm.qk_norm_gain.value == "none"
    assert (lm.nope_attn_scale, lm.nope_floor_scale, lm.attention_chunk) == (0.3, 4.0, 8)
    assert lm.resolved_layer_types() == ("chunked_attention", "full_attention") * 2
    o = qknorm.from_hf(make_hf("olmo3")).config
    assert o.qk_norm.value == "full" and o.global_every == 4 and o.local_rope == (2e4, None)


def test_llama4_default_config_reads_its_moe_layers():
    """The class defaults (every layer sparse, 16 experts, top-1), once refused, read as Llama 4's MoE."""
    c = qknorm.interop.hf_config.config_from_hf({"model_type": "llama4_text", "num_hidden_layers": 2})[0]
    assert (c.n_experts, c.experts_per_token, c.moe_every, c.moe_router.value, c.moe_shared_expert) == \
        (16, 1, 1, "sigmoid", True)
    assert (c.d_ff, c.moe_d_ff) == (16384, 8192)  # intermediate_size_mlp (dense), intermediate_size (experts)


def test_qknorm_layouts_export_as_the_family_that_has_them(tmp_path):
    """A preset with a family's layout exports to that family and loads back in transformers as the same function:
    a pre-norm LayerNorm Llama is StableLM's layout; an OLMo 2 with windows, OLMo 3's."""
    transformers = pytest.importorskip("transformers")
    ids = input_ids()
    for preset, overrides, cls in (("llama", dict(norm_type="layernorm"), "StableLmForCausalLM"),
                                   ("olmo2", dict(sliding_window=8, global_every=2), "Olmo3ForCausalLM")):
        torch.manual_seed(0)
        model = qknorm.TransformerLM(qknorm.get_config(preset, vocab_size=128, **overrides)).eval()
        out = tmp_path / preset
        qknorm.to_hf(model, out)
        back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa").eval()
        assert type(back).__name__ == cls
        with torch.no_grad():
            assert rel_err(back(input_ids=ids).logits, model(ids)) < 1e-6


@pytest.mark.parametrize("name", ["olmo3", "cohere", "stablelm_parallel", "exaone4", "hunyuan_v1_dense",
                                  "llama4_text"])
def test_cached_greedy_decoding_equals_transformers_generate(name):
    """Our KV-cached decoding past the windows, chunks (8) and temperature floors (4) of each family: the new
    tokens' absolute positions reach RoPE, the chunk masks and Llama 4's NoPE temperature through the cache."""
    from helpers.greedy import assert_same_greedy
    from helpers.peaked import spread

    transformers = pytest.importorskip("transformers")
    hf = spread(make_hf(name, attn="sdpa"))
    ours = qknorm.from_hf(hf)
    ids, n = input_ids(length=10), 22
    gc = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=0, eos_token_id=None,
                                       pad_token_id=0, bos_token_id=None)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
        logits = hf(input_ids=ref).logits[:, ids.shape[1] - 1:-1]
    assert_same_greedy(ours.generate(ids, n), ref, logits, ids.shape[1])
