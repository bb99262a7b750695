"""KV cache (qknorm/nn/kv_cache.py) and the model's cached forward.

- Cached decoding equals recomputation: the logits of every step (prefill, single tokens, a multi-token chunk
  after a cache) equal a full uncached forward over the whole prefix, to fp32 rounding, for every preset,
  a custom config with full-width QK-norm + sliding windows + MQA + softcapped (eager) attention, and the
  fused Triton op (under TRITON_INTERPRET=1 on CPU).
- What is stored: keys after QK-norm and RoPE at their absolute positions (checked against a float64 formula
  written out here), n_kv_heads heads, and on sliding layers only the last window-1 positions.
- Errors: a full cache, a bad max_len, a different batch.
"""
from __future__ import annotations

import copy

import pytest
import torch

import qknorm
from qknorm.nn.attention import causal_mask
from qknorm.nn.kv_cache import KVCache
from qknorm.nn.rope import RotaryEmbedding

from helpers.peaked import peaked

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

torch.set_num_threads(1)


CUSTOM = dict(  # full-width QK-norm on a sandwich block with sliding windows, MQA and softcapped eager attention
    qk_norm="full", placement="sandwich", n_kv_heads=1, n_layers=3, sliding_window=6, global_every=2,
    attn_softcap=20.0, attention_bias=True, rope_local_theta=1e3)
CASES = {
    "llama": ("llama", {}), "qwen3": ("qwen3", {}), "olmo2": ("olmo2", {}), "gemma3": ("gemma3", {}),
    "postln": ("postln", {}), "custom_full_qk": ("llama", CUSTOM),
    "yarn_rope": ("qwen3", dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
}
CHUNKS = (13, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)  # 40 positions


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@torch.no_grad()
def assert_cached_equals_full(model, chunks=CHUNKS, B=2, tol=2e-5):
    T = sum(chunks)
    ids = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(3))
    full = model(ids)  # (B, T, V), no cache
    cache, start = KVCache(model.config, max_len=T), 0
    for n in chunks:
        step = model(ids[:, start:start + n], cache=cache)  # (B, n, V)
        err = rel(step, full[:, start:start + n])
        assert err < tol, f"positions {start}..{start + n - 1}: rel. error {err:.2e} vs the uncached forward"
        start += n
    assert cache.offset == T
    return cache


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_steps_equal_uncached_forward(case):
    preset, over = CASES[case]
    model = peaked(preset, **over)
    cache = assert_cached_equals_full(model)
    c = model.config
    for layer, kv in zip(model.layers, cache.layers):  # the window the cache used is the attention's
        assert kv.window == layer.attn.window
    if case == "custom_full_qk":
        assert model.layers[0].attn.eager and c.qk_norm.value == "full" and c.n_kv_heads == 1
    if case in ("gemma3", "custom_full_qk"):  # 40 positions > window: the sliding layers dropped keys
        assert any(kv.window is not None and kv.kept == kv.window - 1 < cache.offset for kv in cache.layers)


def test_cached_steps_equal_uncached_forward_triton_backend(monkeypatch):
    from qknorm.ops import op

    calls = []
    real = op.qk_norm_rope_op
    monkeypatch.setattr(op, "qk_norm_rope_op", lambda *a: calls.append(a[0].shape) or real(*a))
    model = peaked("qwen3", qk_backend="triton", n_layers=1)
    assert_cached_equals_full(model, chunks=(5, 1, 3, 1), B=1, tol=1e-5)
    assert (1, 1, 4, 32) in calls and (1, 3, 4, 32) in calls  # the fused op ran on the new tokens only


def test_prefill_is_the_uncached_forward_bit_for_bit():
    model = peaked("gemma3")
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        assert torch.equal(model(ids, cache=KVCache(model.config, max_len=24)), model(ids))


# --------------------------------------------------------------------------------------------- what is stored
def ref_keys_layer0(model, ids) -> torch.Tensor:
    """Layer 0's keys after QK-norm and RoPE, float64, written out from the formulas: (B, Hkv, T, D)."""
    c, attn = model.config, model.layers[0].attn
    B, T = ids.shape
    with torch.no_grad():
        x = model.embed(ids).double() * (c.d_model ** 0.5 if c.embed_scale else 1.0)
        h = copy.deepcopy(model.layers[0].attn_norm_in).double()(x)  # the block's input norm (tests/core)
        w = attn.k_proj.weight.double()
        k = (h @ w.T + (attn.k_proj.bias.double() if attn.k_proj.bias is not None else 0)).view(
            B, T, c.n_kv_heads, c.head_dim)  # (B, T, Hkv, D)
        if c.qk_norm.value == "head":
            g = attn.k_norm.weight.double() + c.norm_offset
            k = k / k.pow(2).mean(-1, keepdim=True).add(c.norm_eps).sqrt() * g
        theta, scaling = c.local_rope if attn.window is not None else (c.rope_theta, c.rope_scaling)
        assert scaling is None  # plain RoPE in these presets: theta^(-2i/D) per pair of dimensions
        inv = theta ** (-torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]  # (T, D/2)
        cos, sin = ang.cos()[:, None], ang.sin()[:, None]  # (T, 1, D/2)
        k1, k2 = k[..., : c.head_dim // 2], k[..., c.head_dim // 2:]
        k = torch.cat([k1 * cos - k2 * sin, k2 * cos + k1 * sin], dim=-1)  # rotate pairs (i, i + D/2)
    return k.transpose(1, 2)  # (B, Hkv, T, D)


@pytest.mark.parametrize("preset", ["qwen3", "gemma3"])
def test_cache_holds_keys_after_qk_norm_and_rope_at_absolute_positions(preset):
    model = peaked(preset)
    c = model.config
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(5))
    cache = KVCache(c, max_len=30)
    with torch.no_grad():
        model(ids[:, :20], cache=cache)
        for t in range(20, 30):
            model(ids[:, t:t + 1], cache=cache)
    ref = ref_keys_layer0(model, ids)
    kv = cache.layers[0]
    assert kv.k.shape[:2] == (2, c.n_kv_heads) and c.n_kv_heads < c.n_heads  # GQA: kv heads, not query heads
    if kv.window is None:
        stored = kv.k[:, :, :30]
    else:  # gemma3 layer 0 is sliding, window 16: the last 15 positions only
        assert kv.window == 16 and kv.k.shape[2] == kv.kept == 15
        stored, ref = kv.k, ref[:, :, -15:]
    assert rel(stored, ref) < 1e-5


def test_sliding_layers_stay_bounded_and_full_layers_keep_everything():
    model = peaked("gemma3")  # layers: sliding (16), sliding (16), full
    cache = KVCache(model.config, max_len=100)
    ids = torch.randint(0, 256, (1, 100))
    with torch.no_grad():
        model(ids[:, :40], cache=cache)  # a prefill longer than the window keeps only its last 15 keys
        assert [kv.kept for kv in cache.layers] == [15, 15, 40]
        for t in range(40, 100):
            model(ids[:, t:t + 1], cache=cache)
    sliding, full = cache.layers[0], cache.layers[2]
    assert sliding.k.shape == sliding.v.shape == (1, 2, 15, 32) and sliding.seen == 100
    assert full.kept == 100 and full.k.shape == (1, 2, 100, 32)


def test_mqa_cache_stores_one_kv_head():
    model = peaked("llama", n_kv_heads=1)
    cache = KVCache(model.config, max_len=8)
    with torch.no_grad():
        model(torch.randint(0, 256, (3, 8)), cache=cache)
    assert all(kv.k.shape == (3, 1, 8, 16) for kv in cache.layers)


def test_rope_offset_tables_are_rows_of_the_full_table():
    rope = RotaryEmbedding(32, theta=1e4, scaling=2.0)
    cos, sin = rope(40, torch.device("cpu"))
    c5, s5 = rope(3, torch.device("cpu"), offset=37)
    assert torch.equal(c5, cos[37:]) and torch.equal(s5, sin[37:])


def test_causal_mask_with_past_keys():
    # 2 queries at positions 3, 4 over keys 0..4, window 2: key k visible iff q-2 < k <= q
    assert causal_mask(2, 2, "cpu", n_past=3).tolist() == [[False, False, True, True, False],
                                                           [False, False, False, True, True]]
    assert torch.equal(causal_mask(4, None, "cpu"), torch.ones(4, 4, dtype=torch.bool).tril())


# --------------------------------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    model = peaked("llama")
    cache = KVCache(model.config, max_len=4)
    with torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
        with pytest.raises(qknorm.ConfigError, match=r"max_len=4 is too small: it holds 3 positions and 2 more"):
            model(torch.zeros(2, 2, dtype=torch.long), cache=cache)
        with pytest.raises(qknorm.ConfigError, match="new cache per batch"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(qknorm.ConfigError, match="max_len"):
            KVCache(model.config, max_len=bad)
