"""What identifies a token stream: `fingerprint(train, val, vocab_size) -> DataFingerprint`.

A run records it (run.json; resuming checks the data against it) and a study gives it to every run it plans
(each worker checks it read the same tokens). The sha256 covers every token of streams up to 128M tokens and,
beyond that, the first, last and 64 evenly spaced blocks of 1M tokens (`method` says which); tokens are hashed
as uint32 whatever their stored dtype, in chunks, so a memory-mapped token file is never read whole.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

__all__ = ["DataFingerprint", "fingerprint"]

_FULL_HASH_TOKENS = 1 << 27  # streams up to 128M tokens are hashed whole; longer ones by a fixed sample
_SAMPLE_TOKENS = 1 << 20
_CHUNK = 1 << 24  # tokens converted to uint32 at a time


@dataclass(frozen=True)
class DataFingerprint:
    """A token stream's length, vocabulary, and a sha256 of its tokens (module docstring)."""

    n_tokens: int
    vocab_size: int
    sha256: str
    method: str  # "full" or "sampled"

    @property
    def short(self) -> str:
        """16 hex digits of the sha256: the key a study's runs carry."""
        return self.sha256[:16]


def fingerprint(train: np.ndarray, val: np.ndarray, vocab_size: int) -> DataFingerprint:
    """The identity of the stream `train` then `val` (1-D integer arrays, possibly memory-mapped)."""
    parts = (train, val)
    n = int(len(train) + len(val))
    h = hashlib.sha256(f"{n}:{vocab_size}:".encode())
    if n <= _FULL_HASH_TOKENS:
        for part in parts:
            for i in range(0, len(part), _CHUNK):
                h.update(np.ascontiguousarray(part[i:i + _CHUNK], dtype=np.uint32).tobytes())
        return DataFingerprint(n, vocab_size, h.hexdigest(), "full")
    for start in np.linspace(0, n - _SAMPLE_TOKENS, 66).astype(np.int64):  # first, last, 64 between
        for piece in _slice(parts, int(start), int(start) + _SAMPLE_TOKENS):
            h.update(np.ascontiguousarray(piece, dtype=np.uint32).tobytes())
    return DataFingerprint(n, vocab_size, h.hexdigest(), "sampled")


def _slice(parts: Sequence[np.ndarray], start: int, stop: int) -> Iterator[np.ndarray]:
    """The pieces of [start, stop) of the concatenation of `parts` (without concatenating them)."""
    offset = 0
    for p in parts:
        lo, hi = max(start - offset, 0), min(stop - offset, len(p))
        if lo < hi:
            yield np.asarray(p[lo:hi])
        offset += len(p)
