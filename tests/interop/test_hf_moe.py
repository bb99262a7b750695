"""The mixture-of-experts families (nn/moe.py): OLMoE, Qwen3-MoE and Llama 4 load within 1e-6 of transformers' SDPA
logits, the routing fields matter, the balancing loss is transformers' aux_loss, both expert layouts load.

Tiny random models (helpers/hf_models.py): top-2 of 4 experts (OLMoE, Qwen3-MoE with a dense mlp_only layer),
top-3 of 5 with norm_topk_prob and biases (OLMoE), top-1 of 3 on every second layer with sliding windows
(Qwen3-MoE). The export round trip of each runs in test_hf_roundtrip.py (the `variant` fixture covers them).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import qknorm
from qknorm.interop.hf_keys import normalize_hf_keys

from helpers.hf_models import input_ids, make_hf, rel_err

pytestmark = pytest.mark.numerics
MOE = ["olmoe", "olmoe_topk_norm_bias", "qwen3_moe", "qwen3_moe_sliding"]


@pytest.mark.parametrize("name", MOE)
def test_moe_logits_match_transformers_and_routing_fields_matter(name):
    hf = make_hf(name, attn="sdpa")
    ours = qknorm.from_hf(hf)
    c = ours.config
    assert c.n_experts == hf.config.num_experts and c.experts_per_token == hf.config.num_experts_per_tok
    assert ours.num_params() == c.num_params() == sum(p.numel() for p in hf.parameters())  # tied: counted once
    ids = input_ids(length=64)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        assert rel_err(ours(ids), ref) < 1e-6  # measured 1.2e-7 .. 3.5e-7 (the experts' gate and up unfused)
        changes = [dict(experts_per_token=c.experts_per_token % c.n_experts + 1)]
        if c.experts_per_token > 1:
            changes.append(dict(norm_topk_prob=not c.norm_topk_prob))
        for change in changes:
            other = qknorm.TransformerLM(c.replace(**change))
            other.load_state_dict(ours.state_dict())
            assert rel_err(other(ids), ref) > 1e-3, change


@pytest.mark.parametrize("name", ["olmoe", "qwen3_moe"])
def test_router_aux_loss_is_transformers_aux_loss(name):
    hf = make_hf(name, attn="sdpa")
    ours = qknorm.from_hf(hf)
    ids = input_ids()
    theirs = hf(input_ids=ids, output_router_logits=True).aux_loss
    ours(ids)
    mine = ours.router_aux_loss()
    assert mine.requires_grad
    torch.testing.assert_close(mine, theirs.float(), rtol=1e-6, atol=0)


def test_saved_per_expert_and_in_memory_fused_experts_load_the_same(tmp_path):
    """transformers 5 holds experts fused (gate_up_proj (E, 2F, d)); save_pretrained writes them per expert."""
    hf = make_hf("qwen3_moe")
    assert any(k.endswith("experts.gate_up_proj") for k in hf.state_dict())
    hf.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.0.mlp.experts.3.up_proj.weight" in saved
    assert sorted(normalize_hf_keys(hf.state_dict())) == sorted(saved)
    a, b = qknorm.from_hf(hf), qknorm.from_hf(tmp_path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("name", ["llama4_text_moe", "llama4_text_moe_top2"])
def test_llama4_moe_logits_match_transformers_and_its_routing_matters(name):
    """Llama 4's sparse layers: top-k of the router logits, their sigmoid scaling each chosen expert's INPUT, and
    a shared expert; every 2nd layer top-1 of 3 experts, or moe_layers [0, 1, 3] top-2 of 4 (layer 2 dense)."""
    hf = make_hf(name, attn="sdpa")
    ours = qknorm.from_hf(hf)
    c = ours.config
    assert (c.n_experts, c.experts_per_token) == (hf.config.num_local_experts, hf.config.num_experts_per_tok)
    sparse = [i for i in range(c.n_layers) if type(ours.layers[i].mlp).__name__ == "MoEMLP"]
    assert sparse == list(hf.config.moe_layers)
    assert ours.num_params() == c.num_params() == sum(p.numel() for p in hf.parameters())
    ids = input_ids(length=64)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        assert rel_err(ours(ids), ref) < 1e-6  # measured 4.1e-7 .. 6.0e-7 (seeds 0-2), as dense llama4_text
        # the softmax rule (weights on the outputs) and another top-k are other functions of the same weights
        for change in (dict(moe_router="softmax"), dict(experts_per_token=c.experts_per_token % c.n_experts + 1)):
            other = qknorm.TransformerLM(c.replace(**change))
            other.load_state_dict(ours.state_dict())
            assert rel_err(other(ids), ref) > 1e-3, change


def test_llama4_experts_stay_fused_on_disk(tmp_path):
    """transformers holds and saves Llama 4's experts fused and transposed (gate_up_proj (E, d, 2F)); export writes
    that form (test_hf_roundtrip.py: identical tensors), and our stacked (E, F, d) gate is its first F columns."""
    hf = make_hf("llama4_text_moe")
    ours = qknorm.from_hf(hf)
    fused = hf.model.layers[1].feed_forward.experts.gate_up_proj  # (E, d, 2F)
    F = ours.config.moe_d_ff
    assert torch.equal(ours.layers[1].mlp.gate_proj, fused[..., :F].transpose(1, 2))
    assert torch.equal(ours.layers[1].mlp.up_proj, fused[..., F:].transpose(1, 2))
    qknorm.to_hf(ours, tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(saved["model.layers.1.feed_forward.experts.gate_up_proj"], fused)
    assert not [k for k in saved if k.endswith(".ours")]
