"""Autoregressive generation with a KV cache: greedy decoding and sampling (temperature, top-k, top-p).

    out = model.generate(ids, 32)                                        # greedy: (B, T) -> (B, T + 32)
    out = model.generate(ids, 32, temperature=0.8, top_p=0.95, seed=0)   # sampled, reproducible
    for tok in model.stream(ids, 32, temperature=0.8, seed=0): ...       # (B,) new ids a step, as they come

The prompt is prefilled in one forward that fills the cache (nn/kv_cache.py: keys after QK-norm and RoPE,
sliding layers bounded by their window); each step then runs one token per sequence at its absolute position.
Only the last position's logits are computed (no (B, T, vocab) tensor for a long prompt).

Choosing a token, in the order HF transformers uses: greedy (temperature 0) takes the argmax (the first
index on ties) and ignores top_k/top_p; otherwise logits / temperature, then top-k (keep the k largest, ties
at the k-th kept), then top-p (nucleus: keep the most probable tokens until their probability sums to at
least p; the most probable token is always kept), then one draw from the renormalized distribution with a
torch.Generator seeded by `seed` (None: torch's global generator, so not reproducible by itself).

End of sequence: once a row has produced `eos_token_id`, every later token of that row is eos_token_id (the
row is padded with it); decoding stops early when every row has finished, and `generate` still returns
(B, T + max_new_tokens). `stream` yields only the steps that were run.

Length: prompt + max_new_tokens must fit in config.max_seq_len (the positions the model was built and
trained for; RoPE beyond them is extrapolation): ConfigError otherwise. Rows of a batch share one length
(no padding of prompts). The prompt is moved to the model's device and the result stays there. The model is
used as it is (no eval()/train() switch; ours has no dropout).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import torch
from torch import nn

from .errors import ConfigError
from .nn.kv_cache import KVCache


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling:
    """How each next token is chosen; checked at construction (ConfigError naming the argument)."""

    temperature: float = 0.0  # 0 = greedy; > 0 divides the logits before sampling
    top_k: Optional[int] = None  # keep the k most likely tokens (None: all)
    top_p: Optional[float] = None  # nucleus: keep the smallest most-likely set with probability >= p (None: 1)
    seed: Optional[int] = None  # seeds a torch.Generator for the draws (None: torch's global generator)
    eos_token_id: Optional[int] = None  # a row stops at this token; the rest of the row is padded with it

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 <= t < math.inf):
            raise ConfigError(f"temperature={t!r} must be a finite number >= 0 (0 = greedy)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ConfigError(f"top_k={self.top_k!r} must be an integer >= 1, or None (no top-k filter)")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ConfigError(f"top_p={p!r} must be a number in (0, 1], or None (no nucleus filter)")
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigError(f"seed={self.seed!r} must be an integer or None")
        if self.eos_token_id is not None and (not _is_int(self.eos_token_id) or self.eos_token_id < 0):
            raise ConfigError(f"eos_token_id={self.eos_token_id!r} must be an integer >= 0 (a token id) or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.seed is None or self.greedy:
            return None
        return torch.Generator(device=device).manual_seed(int(self.seed))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_request(model: nn.Module, input_ids, max_new_tokens, sampling: Sampling) -> None:
    """ConfigError naming the argument for a prompt, length or eos id this model cannot generate from."""
    c = model.config
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point() \
            or input_ids.is_complex() or input_ids.dtype == torch.bool or 0 in input_ids.shape:
        desc = f"a {input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(
            input_ids, torch.Tensor) else type(input_ids).__name__
        raise ConfigError(f"input_ids must be an integer tensor (B, T) with B, T >= 1; got {desc}")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= c.vocab_size:
        raise ConfigError(f"input_ids: token id {lo if lo < 0 else hi} is outside the vocabulary [0, {c.vocab_size})")
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    T = input_ids.shape[1]
    if T + max_new_tokens > c.max_seq_len:
        raise ConfigError(f"max_new_tokens={max_new_tokens}: the prompt's {T} tokens + {max_new_tokens} new ones "
                          f"exceed the model's max_seq_len={c.max_seq_len} (at most {max(c.max_seq_len - T, 0)} "
                          "new tokens fit)")
    if sampling.eos_token_id is not None and sampling.eos_token_id >= c.vocab_size:
        raise ConfigError(f"eos_token_id={sampling.eos_token_id} is outside the vocabulary [0, {c.vocab_size})")


def next_token(logits: torch.Tensor, sampling: Sampling, generator: Optional[torch.Generator]) -> torch.Tensor:
    """logits (B, vocab) -> token ids (B,) chosen as `sampling` says (the module docstring has the order)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        drop_sorted = before >= sampling.top_p  # the set already reached p without this token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (B, V) back in vocab order
        logits = logits.masked_fill(drop, -math.inf)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def last_logits(model: nn.Module, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run `ids` (B, T) after the cache's positions; the logits of the last one, (B, vocab)."""
    h = model.hidden_states(ids, cache=cache)[:, -1:]  # (B, 1, d)
    return model.logits(h)[:, -1]


def stream(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
           sampling: Sampling = Sampling()) -> Iterator[torch.Tensor]:
    """An iterator over the new tokens, (B,) a step, each yielded as soon as it is chosen.

    Arguments are checked now, not at the first next(); the prompt is prefilled at the first next()."""
    check_request(model, input_ids, max_new_tokens, sampling)
    device = next(model.parameters()).device
    return _decode(model, input_ids.long().to(device), max_new_tokens, sampling)


@torch.no_grad()
def _decode(model, ids, max_new_tokens, sampling) -> Iterator[torch.Tensor]:
    B, T = ids.shape
    if max_new_tokens == 0:
        return
    gen = sampling.generator(ids.device)
    cache = KVCache(model.config, max_len=T + max_new_tokens)
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    logits = last_logits(model, ids, cache)  # prefill: the whole prompt in one forward
    for step in range(max_new_tokens):
        tok = next_token(logits, sampling, gen)  # (B,)
        if sampling.eos_token_id is not None:
            tok = tok.masked_fill(finished, sampling.eos_token_id)
            finished |= tok == sampling.eos_token_id
        yield tok
        if step + 1 == max_new_tokens or (sampling.eos_token_id is not None and bool(finished.all())):
            return
        logits = last_logits(model, tok[:, None], cache)  # (B, 1) at position T + step


def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
             sampling: Sampling = Sampling()) -> torch.Tensor:
    """input_ids (B, T) -> (B, T + max_new_tokens) int64: the prompt, then the new tokens (eos-padded rows)."""
    steps = list(stream(model, input_ids, max_new_tokens, sampling))
    ids = input_ids.long().to(next(model.parameters()).device)
    new = torch.stack(steps, dim=1) if steps else ids.new_empty(ids.shape[0], 0)  # (B, n_run)
    if new.shape[1] < max_new_tokens:  # every row finished early: pad with eos
        pad = new.new_full((ids.shape[0], max_new_tokens - new.shape[1]), sampling.eos_token_id)
        new = torch.cat([new, pad], dim=1)
    return torch.cat([ids, new], dim=1)
