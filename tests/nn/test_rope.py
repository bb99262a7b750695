"""RoPE variants against transformers: inverse frequencies, attention factor and the cos/sin tables of every
variant equal transformers' (`ROPE_INIT_FUNCTIONS` and its rotary modules) bit for bit in fp32, at any offset;
the RotaryEmbedding cache hands out exactly the fresh tables."""
from __future__ import annotations

import math

import pytest
import torch

from qknorm.nn.rope import RotaryEmbedding, inv_freq, rope_tables
from qknorm.rope_scaling import RopeScaling

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

LLAMA32 = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=8192)  # meta-llama/Llama-3.2-1B config.json
QWEN3_YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32768)  # Qwen3 long-context recipe
VARIANTS = {  # name -> (theta, HF rope_parameters without rope_theta, or None for plain RoPE)
    "default": (1e4, None),
    "linear": (5e4, dict(rope_type="linear", factor=2.0)),
    "llama3_3.2": (5e5, LLAMA32),
    "llama3_other": (1e4, dict(rope_type="llama3", factor=8.0, low_freq_factor=2.0, high_freq_factor=8.0,
                               original_max_position_embeddings=256)),
    "yarn_qwen3": (1e6, QWEN3_YARN),
    "yarn_betas_no_truncate": (1e4, dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=64,
                                         beta_fast=16.0, beta_slow=2.0, truncate=False)),
    "yarn_attention_factor": (1e4, dict(rope_type="yarn", factor=3.0, original_max_position_embeddings=100,
                                        attention_factor=1.25)),
}


def _hf_config(theta, params, head_dim, max_pos=131072):
    rope = {"rope_type": "default", "rope_theta": theta} if params is None else {"rope_theta": theta, **params}
    return transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                    max_position_embeddings=max_pos, rope_parameters=rope)


def _ours(params):
    return None if params is None else RopeScaling(**params)


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_inv_freq_and_attention_factor_match_transformers(name, head_dim):
    theta, params = VARIANTS[name]
    hf_cfg = _hf_config(theta, params, head_dim)
    if params is None:
        want, factor = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(
            hf_cfg)
    else:
        want, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_cfg, None)
    got = inv_freq(head_dim, theta, _ours(params))
    assert got.dtype == torch.float32 and torch.equal(got, want), (got - want).abs().max()
    scaling = _ours(params)
    assert (1.0 if scaling is None else scaling.attention_scaling) == factor


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("offset", [0, 37, 9000])
def test_tables_match_transformers_rotary_module(name, offset):
    theta, params = VARIANTS[name]
    D, T = 64, 48
    rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(_hf_config(theta, params, D))
    pos = torch.arange(offset, offset + T)[None]  # (1, T)
    cos_hf, sin_hf = rotary(torch.zeros(1, dtype=torch.float32), pos)  # (1, T, D)
    cos, sin = rope_tables(T, D, theta=theta, scaling=_ours(params), offset=offset)
    assert cos.shape == (T, D) and cos.dtype == torch.float32
    assert torch.equal(cos, cos_hf[0]) and torch.equal(sin, sin_hf[0])


def test_variants_really_differ_from_plain_rope():
    """The published parameters change the tables at these lengths (the parity tests would see a wrong variant)."""
    plain = rope_tables(256, 64, theta=5e5)[1]
    llama = rope_tables(256, 64, theta=5e5, scaling=RopeScaling(**LLAMA32))[1]
    assert (plain - llama).abs().max() > 0.1
    yarn_cos = rope_tables(8, 64, theta=1e6, scaling=RopeScaling(**QWEN3_YARN))[0]
    assert yarn_cos[0, 0].item() == pytest.approx(0.1 * math.log(4.0) + 1.0)  # cos(0) * attention factor


def test_offset_rows_equal_rows_of_a_longer_table():
    s = RopeScaling(**LLAMA32)
    full_cos, full_sin = rope_tables(300, 64, theta=5e5, scaling=s)
    cos, sin = rope_tables(100, 64, theta=5e5, scaling=s, offset=200)
    assert torch.equal(cos, full_cos[200:]) and torch.equal(sin, full_sin[200:])


def test_rotary_embedding_cache_gives_fresh_tables():
    s = RopeScaling(**QWEN3_YARN)
    rope = RotaryEmbedding(128, theta=1e6, scaling=s)
    for seq_len, offset in [(5, 0), (1, 5), (1, 6), (40, 0), (3, 60), (2, 1)]:  # grows, then slices
        cos, sin = rope(seq_len, torch.device("cpu"), offset=offset)
        ref_cos, ref_sin = rope_tables(seq_len, 128, theta=1e6, scaling=s, offset=offset)
        assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin) and cos.is_contiguous()
    assert list(rope.state_dict()) == []


def test_numbers_are_read_as_linear_factors():
    """Configs saved before RoPE variants hold a float: a linear factor, 1 = plain."""
    assert RopeScaling.from_value(1.0) is None and RopeScaling.from_value(None) is None
    assert RopeScaling.from_value(8) == RopeScaling(rope_type="linear", factor=8.0)
    assert torch.equal(rope_tables(16, 32, theta=1e4, scaling=8.0)[0],
                       rope_tables(16, 32, theta=1e4, scaling=RopeScaling(rope_type="linear", factor=8.0))[0])
    s = RopeScaling(**LLAMA32)
    assert RopeScaling.from_value(s.to_dict()) == s and s.to_dict() == LLAMA32
