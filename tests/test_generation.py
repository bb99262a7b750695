"""Generation (qknorm/generation.py): greedy decoding equals transformers' `generate` token for token; sampling
is reproducible and follows an independently computed distribution; eos and argument errors behave as documented.

The HF references are our random models exported with `qknorm.to_hf` and loaded by transformers'
AutoModelForCausalLM (its own attention, RoPE and cache code, including Gemma 3's sliding-window cache), so
greedy equality checks our KV cache, the positions of the new tokens and the bounded sliding-window cache.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import qknorm
from qknorm.generation import Sampling, next_token

from helpers.greedy import assert_same_greedy
from helpers.peaked import peaked, spread

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*(pad_token_id|eos_token_id|generation flags).*")

torch.set_num_threads(1)


def prompt(B=2, T=12, vocab=256, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_export(model, tmp_path):
    qknorm.to_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    return hf


def hf_greedy(hf, ids, n, eos=None):
    """transformers' greedy continuation (B, T + n) and its own logits over it, teacher-forced (B, n, V)."""
    gc = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=0, eos_token_id=eos,
                                       pad_token_id=0 if eos is None else eos, bos_token_id=None)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
        return out, hf(input_ids=out).logits[:, ids.shape[1] - 1:-1]


# --------------------------------------------------------------------------------------------- HF parity
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, original_max_position_embeddings=16, low_freq_factor=1.0,
                  high_freq_factor=4.0)  # Llama 3.x's RoPE; positions here run past its original 16


@pytest.mark.parametrize("preset,over", [("llama", {}), ("qwen3", {}), ("olmo2", {}), ("gemma3", {}),
                                         ("llama", dict(rope_scaling=LLAMA3_ROPE))],
                         ids=["llama", "qwen3", "olmo2", "gemma3", "llama_llama3_rope"])
def test_greedy_equals_transformers_generate(preset, over, tmp_path):
    model = peaked(preset, **over)  # debug sizes: GQA 4 query / 2 kv heads; gemma3: window 16, sliding-sliding-full
    ids, n = prompt(T=12), 28  # 40 positions > gemma3's window: its bounded sliding cache is what decides
    ours = model.generate(ids, n)
    ref, logits = hf_greedy(hf_export(model, tmp_path), ids, n)
    assert ours.shape == ref.shape == (2, 12 + n)
    assert_same_greedy(ours, ref, logits, 12)  # to the first near-tie (none measured: every step decided)


def test_greedy_equals_transformers_for_an_hf_built_gemma3():
    """Built in transformers, loaded with from_hf: window 8 with mixed layer types, linear RoPE scaling on the
    global layers (positions of new tokens divided by 4), query_pre_attn_scalar 20, final logit softcap."""
    cfg = transformers.Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], rope_theta=5e5,
        rope_local_base_freq=2e4, rope_scaling={"rope_type": "linear", "factor": 4.0}, query_pre_attn_scalar=20,
        final_logit_softcapping=30.0)
    torch.manual_seed(0)
    hf = spread(transformers.Gemma3ForCausalLM(cfg)).eval()
    ours = qknorm.from_hf(hf)
    assert ours.config.rope_scaling.factor == 4.0 and ours.config.sliding_window == 8
    ids = prompt(T=10, vocab=128)
    assert_same_greedy(ours.generate(ids, 22), *hf_greedy(hf, ids, 22), 10)


def test_eos_stops_a_row_like_transformers(tmp_path):
    model = peaked("qwen3")
    ids = prompt(T=10)
    free = model.generate(ids, 20)[:, 10:]
    eos = int(free[0, 5])  # row 0 produces it at step 5 (or earlier); row 1 may never
    first = int((free[0] == eos).nonzero()[0])
    ours = model.generate(ids, 20, eos_token_id=eos)
    ref, logits = hf_greedy(hf_export(model, tmp_path), ids, 20, eos=eos)  # HF pads finished rows with pad = eos
    assert_same_greedy(ours[:, :ref.shape[1]], ref, logits, 10, eos=eos)
    assert (ours[0, 10 + first:] == eos).all() and torch.equal(ours[0, 10:10 + first], free[0, :first])
    steps = list(model.stream(ids[:1], 20, eos_token_id=eos))  # one row: decoding stops at its eos
    assert len(steps) == first + 1 and int(steps[-1]) == eos
    assert model.generate(ids[:1], 20, eos_token_id=eos).shape == (1, 30)  # generate still pads to T + N


# --------------------------------------------------------------------------------------------- sampling
def test_sampling_is_reproducible_and_degenerates_to_greedy():
    model = peaked("llama")
    ids = prompt(T=8)
    greedy = model.generate(ids, 16)
    a = model.generate(ids, 16, temperature=1.0, top_k=50, seed=7)
    assert torch.equal(a, model.generate(ids, 16, temperature=1.0, top_k=50, seed=7))
    assert not torch.equal(a, model.generate(ids, 16, temperature=1.0, top_k=50, seed=8))
    assert not torch.equal(a, greedy)
    assert torch.equal(model.generate(ids, 16, temperature=1.0, top_k=1, seed=3), greedy)
    assert torch.equal(model.generate(ids, 16, temperature=1.5, top_p=1e-6, seed=3), greedy)
    streamed = torch.stack(list(model.stream(ids, 16, temperature=1.0, top_k=50, seed=7)), dim=1)
    assert torch.equal(streamed, a[:, 8:])


def _reference_distribution(logits: torch.Tensor, temperature, top_k, top_p) -> torch.Tensor:
    """float64 probabilities after temperature, top-k, top-p (HF's order), computed token by token."""
    z = logits.double() / temperature
    order = sorted(range(len(z)), key=lambda i: -float(z[i]))
    keep = set(order[:top_k] if top_k else order)
    if top_p is not None:
        p = torch.softmax(torch.tensor([float(z[i]) if i in keep else -float("inf") for i in range(len(z))],
                                       dtype=torch.float64), 0)
        mass, nucleus = 0.0, set()
        for i in order:
            if i in keep and mass < top_p:
                nucleus.add(i)
                mass += float(p[i])
        keep = nucleus
    masked = torch.tensor([float(z[i]) if i in keep else -float("inf") for i in range(len(z))], dtype=torch.float64)
    return torch.softmax(masked, 0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, None, None), (1.0, 5, None), (1.3, None, 0.6),
                                                     (2.0, 12, 0.8)])
def test_samples_follow_the_filtered_distribution(temperature, top_k, top_p):
    model = peaked("olmo2")
    N = 4000
    ids = prompt(B=1, T=6).expand(N, 6)
    with torch.no_grad():
        logits = model(ids[:1])[0, -1]  # (V,) from the uncached forward
    want = _reference_distribution(logits, temperature, top_k, top_p)
    got = model.generate(ids, 1, temperature=temperature, top_k=top_k, top_p=top_p, seed=0)[:, -1]
    freq = torch.bincount(got, minlength=256).double() / N
    assert (freq[want == 0] == 0).all(), "sampled a token the filters remove"
    sigma = (want * (1 - want) / N).sqrt()
    assert ((freq - want).abs() <= 5 * sigma + 2e-3).all(), float(((freq - want).abs() - 5 * sigma).max())
    assert (want > 0).sum() > 1  # a real distribution, not a forced token


def test_next_token_top_p_keeps_the_most_likely_token():
    logits = torch.tensor([[3.0, 0.0, -1.0], [0.0, 0.0, 5.0]])
    s = Sampling(temperature=1.0, top_p=0.01)
    assert next_token(logits, s, torch.Generator().manual_seed(0)).tolist() == [0, 2]


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1.0), "temperature=-1.0 must be"), (dict(temperature=float("nan")), "temperature=nan"),
    (dict(temperature="hot"), "temperature='hot'"), (dict(top_k=0), "top_k=0 must be an integer >= 1"),
    (dict(top_k=2.5), "top_k=2.5"), (dict(top_p=0.0), r"top_p=0.0 must be a number in \(0, 1\]"),
    (dict(top_p=1.5), "top_p=1.5"), (dict(seed="x"), "seed='x'"), (dict(eos_token_id=-1), "eos_token_id=-1"),
    (dict(eos_token_id=256), r"eos_token_id=256 is outside the vocabulary \[0, 256\)"),
])
def test_bad_sampling_arguments_name_the_argument(kwargs, match):
    model = peaked("llama")
    with pytest.raises(qknorm.ConfigError, match=match):
        model.generate(prompt(), 4, **kwargs)


def test_bad_prompt_or_length_name_the_argument():
    model = peaked("llama")  # max_seq_len 256
    cases = [
        (prompt().float(), "input_ids must be an integer tensor"), (prompt()[0], r"input_ids .* shape \(12,\)"),
        (prompt()[:, :0], "input_ids must be"), (prompt() + 300, "input_ids: token id .* outside the vocabulary"),
    ]
    for ids, match in cases:
        with pytest.raises(qknorm.ConfigError, match=match):
            model.generate(ids, 4)
    with pytest.raises(qknorm.ConfigError, match="max_new_tokens=-1 must be an integer >= 0"):
        model.generate(prompt(), -1)
    msg = r"max_new_tokens=245: the prompt's 12 tokens \+ 245 new ones exceed the model's max_seq_len=256 " \
          r"\(at most 244 new tokens fit\)"
    with pytest.raises(qknorm.ConfigError, match=msg):
        model.stream(prompt(), 245)  # checked when the stream is made, not at its first next()
    assert model.generate(prompt(), 0).shape == (2, 12) and model.generate(prompt(T=56), 200).shape == (2, 256)
