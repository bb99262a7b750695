"""Inserting QK-norm: every other weight is the source's, the new gains are the identity scale whatever the
norm numerics (Gemma's offset weights too), and a model that has QK-norm or a wrong scope is refused."""
import pytest
import torch

import qknorm
from qknorm.errors import ConfigError
from qknorm.retrofit.insert import gains, insert_qk_norm, set_gains

torch.set_num_threads(1)


@pytest.mark.parametrize("preset,scope", [("llama", "head"), ("llama", "full"), ("gemma3", "head"), ("postln", "full")])
def test_insert_copies_every_weight_and_starts_at_scale_one(preset, scope):
    torch.manual_seed(0)
    src = qknorm.TransformerLM(qknorm.get_config(preset, "debug", qk_norm="none"))
    new = insert_qk_norm(src, scope)
    assert new.config.qk_norm.value == scope and new.config.replace(qk_norm="none") == src.config
    own = src.state_dict()
    for k, v in new.state_dict().items():
        if k.endswith(("q_norm.weight", "k_norm.weight")):
            continue
        assert torch.equal(v, own[k]), k
    c = src.config
    q_size = c.head_dim * (c.n_heads if scope == "full" else 1)
    k_size = c.head_dim * (c.n_kv_heads if scope == "full" else 1)
    for q, k in gains(new):
        assert q.shape == (q_size,) and k.shape == (k_size,)
        assert torch.equal(q, torch.ones(q_size)) and torch.equal(k, torch.ones(k_size))
    scales = [(torch.full((q_size,), 2.5), torch.linspace(0.5, 1.5, k_size)) for _ in new.layers]
    set_gains(new, scales)
    for (q, k), (eq, ek) in zip(gains(new), scales):
        assert torch.allclose(q, eq) and torch.allclose(k, ek)
    if c.norm_offset:  # stored as scale - 1, as Gemma stores its norm weights
        assert torch.allclose(new.layers[0].attn.q_norm.weight, torch.full((q_size,), 1.5))


def test_a_model_with_qk_norm_or_a_bad_scope_is_refused():
    with pytest.raises(ConfigError, match=r"already has QK-norm \(qk_norm='head'\)"):
        insert_qk_norm(qknorm.TransformerLM(qknorm.get_config("qwen3", "debug")), "head")
    with pytest.raises(ConfigError, match=r"scope='none' is not allowed; choose one of: head, full"):
        insert_qk_norm(qknorm.TransformerLM(qknorm.get_config("llama", "debug")), "none")
