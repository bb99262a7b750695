"""patch_hf: our fused QK-norm + RoPE op inside HF attention computes the same logits and gradients (fp32,
backend "torch" on CPU), with eager and SDPA attention and through the KV cache."""
from __future__ import annotations

import copy

import pytest
import torch

import qknorm
from qknorm import ConfigError
from qknorm.interop.patch import unpatch_hf

from helpers.greedy import assert_same_greedy
from helpers.hf_models import input_ids, make_gemma3_multimodal, make_hf, rel_err

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels


@pytest.mark.parametrize("name,attn", [("qwen3", "sdpa"), ("qwen3_tied_sliding", "eager"), ("olmo2", "eager"),
                                       ("olmo2_tied", "sdpa"), ("gemma3", "eager"), ("gemma3_untied_bias", "sdpa"),
                                       ("olmo3", "sdpa")])
def test_patched_logits_and_gradients_match(name, attn):
    ref = make_hf(name, attn=attn).train()
    patched = qknorm.patch_hf(copy.deepcopy(ref), backend="torch")
    assert all(getattr(m, "_qknorm_spec", None) for m in patched.modules() if hasattr(m, "q_norm"))
    ids = input_ids()
    out_ref, out = ref(input_ids=ids, labels=ids), patched(input_ids=ids, labels=ids)
    assert rel_err(out.logits, out_ref.logits) < 1e-5
    out_ref.loss.backward()
    out.loss.backward()
    for (n, a), (_, b) in zip(ref.named_parameters(), patched.named_parameters()):
        assert rel_err(b.grad, a.grad) < 1e-5, n
    assert patched.state_dict().keys() == ref.state_dict().keys()


def test_patched_generation_uses_the_cache_correctly():
    ref = make_hf("gemma3")
    patched = qknorm.patch_hf(copy.deepcopy(ref))
    ids = input_ids(1, 12)
    kw = dict(max_new_tokens=8, do_sample=False)
    want = ref.generate(ids, **kw)
    with torch.no_grad():
        logits = ref(input_ids=want).logits[:, ids.shape[1] - 1:-1]
    # the patched op differs from HF's in the last bits (rel_err < 1e-5): tokens to the first near-tie
    assert_same_greedy(patched.generate(ids, **kw), want, logits, ids.shape[1])


def test_patch_multimodal_gemma3_and_unpatch():
    ref = make_gemma3_multimodal()
    patched = qknorm.patch_hf(copy.deepcopy(ref))
    ids = input_ids()
    with torch.no_grad():
        assert rel_err(patched(input_ids=ids).logits, ref(input_ids=ids).logits) < 1e-5
    unpatch_hf(patched)
    assert not any("_qknorm_spec" in m.__dict__ or "forward" in m.__dict__ for m in patched.modules())


def test_patch_rejects_models_without_qk_norm():
    with pytest.raises(ConfigError, match="no attention module with q_norm/k_norm"):
        qknorm.patch_hf(make_hf("llama"))
    with pytest.raises(ConfigError, match="backend='cuda' is not allowed"):
        qknorm.patch_hf(make_hf("qwen3"), backend="cuda")


@pytest.mark.parametrize("name", ["exaone4", "cohere"])
def test_families_the_fused_op_does_not_serve_are_refused(name):
    """EXAONE 4 skips RoPE on its global layers and Cohere's QK-norm is a per-head LayerNorm: swapping in the
    fused RMSNorm + RoPE would change them, so patch_hf refuses in one line."""
    with pytest.raises(qknorm.ConfigError, match=r"patch_hf supports qwen3, olmo2, gemma3_text, olmo3 attention"):
        qknorm.patch_hf(make_hf(name))
