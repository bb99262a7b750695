"""KV cache for incremental decoding: per attention layer, the keys after QK-norm and RoPE, and the values.

Keys are stored after the norm and the rotation (as `ops.qk_norm_rope` returns them), so a decoding step
normalizes and rotates only its new tokens, with RoPE tables for their absolute positions, and never touches
the past again. GQA/MQA layers store their n_kv_heads heads, not the repeated query heads.

What a layer keeps after the model has seen positions 0..p-1:
  full-attention layer      keys/values of all p positions, in a buffer preallocated for `max_len` positions
                            on the first call (shape (B, Hkv, max_len, D), filled up to p).
  sliding layer, window W   keys/values of the last min(p, W-1) positions, nothing older. A query at position
                            q sees the keys q-W < k <= q: itself and the W-1 before it, so an older key can
                            never be read again. A sliding layer's memory is bounded by W-1 positions however
                            long the generation runs (Gemma 3's local layers).
Kept keys are in position order and end just before the new tokens, so a step's attention mask follows from
the shapes alone: queries are the last T of S = kept + T positions (nn/attention.py `causal_mask`).

    cache = KVCache(model.config, max_len=T_prompt + n_new)
    logits = model(prompt_ids, cache=cache)          # prefill: one forward over the whole prompt
    logits = model(next_ids, cache=cache)            # each step: positions cache.offset.. of the new tokens
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..config import SLIDING, ModelConfig
from ..errors import ConfigError


class LayerKV:
    """One attention layer's cache; `update` appends a step and returns the keys/values its queries see."""

    def __init__(self, *, window: Optional[int], max_len: int):
        self.window = window
        self.keep = max_len if window is None else window - 1  # positions kept between calls
        self.k: Optional[torch.Tensor] = None  # full: (B, Hkv, max_len, D) buffer; sliding: (B, Hkv, kept, D)
        self.v: Optional[torch.Tensor] = None
        self.kept = 0  # positions held now
        self.seen = 0  # positions this layer has processed (the absolute position of the next token)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, Hkv, T, D) of the new tokens -> keys, values (B, Hkv, S, D), S = kept + T, past first."""
        if self.k is not None and (k.shape[0], k.shape[1], k.shape[3]) != (self.k.shape[0], self.k.shape[1],
                                                                              self.k.shape[3]):
            raise ConfigError(f"KVCache holds batch/heads/head_dim {tuple(self.k.shape[:2])}/{self.k.shape[3]}; "
                              f"the new keys are {tuple(k.shape)}: use a new cache per batch")
        T = k.shape[2]
        self.seen += T
        return self._append_window(k, v) if self.window is not None else self._append_full(k, v)

    def _append_full(self, k, v):
        if self.k is None:
            B, Hkv, _, D = k.shape
            self.k = k.new_empty(B, Hkv, self.keep, D)  # (B, Hkv, max_len, D)
            self.v = v.new_empty(B, Hkv, self.keep, D)
        end = self.kept + k.shape[2]
        self.k[:, :, self.kept:end] = k
        self.v[:, :, self.kept:end] = v
        self.kept = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, Hkv, S, D) views of the buffers

    def _append_window(self, k, v):
        k_all = k if self.k is None else torch.cat([self.k, k], dim=2)  # (B, Hkv, S, D)
        v_all = v if self.v is None else torch.cat([self.v, v], dim=2)
        start = max(0, k_all.shape[2] - self.keep)
        self.k = k_all[:, :, start:].clone()  # a copy, so a long prefill's keys are not held alive by a view
        self.v = v_all[:, :, start:].clone()
        self.kept = self.k.shape[2]
        return k_all, v_all

    def __repr__(self) -> str:
        return f"LayerKV(window={self.window}, keep={self.keep}, kept={self.kept}, seen={self.seen})"


class KVCache:
    """Keys (after QK-norm and RoPE) and values of every attention layer of one model, for one batch."""

    def __init__(self, config: ModelConfig, max_len: int):
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ConfigError(f"max_len={max_len!r} must be an integer >= 1 (positions the cache can hold)")
        self.max_len = max_len
        windows = [config.sliding_window if t == SLIDING else None for t in config.resolved_layer_types()]
        self.layers: List[LayerKV] = [LayerKV(window=w, max_len=max_len) for w in windows]

    @property
    def offset(self) -> int:
        """Positions seen so far: the absolute position of the next token."""
        return self.layers[0].seen

    def offset_for(self, n_new: int) -> int:
        """The absolute position of the first of `n_new` new tokens; ConfigError when they do not fit."""
        if self.offset + n_new > self.max_len:
            raise ConfigError(f"KVCache max_len={self.max_len} is too small: it holds {self.offset} positions and "
                              f"{n_new} more were given")
        return self.offset

    def __repr__(self) -> str:
        sliding = sum(layer.window is not None for layer in self.layers)
        return (f"KVCache(max_len={self.max_len}, offset={self.offset}, layers={len(self.layers)} "
                f"({sliding} sliding))")
