"""The one data fingerprint: what a run records and a study keys its runs by, against hashlib on the plain bytes."""
import hashlib

import numpy as np

from qknorm.data import fingerprint as F
from qknorm.data.fingerprint import fingerprint


def _plain_sha(train, val, vocab):
    whole = np.concatenate([np.asarray(train), np.asarray(val)]).astype(np.uint32)
    return hashlib.sha256(f"{len(whole)}:{vocab}:".encode() + whole.tobytes()).hexdigest()


def test_a_full_hash_is_the_sha256_of_every_token_as_uint32_whatever_the_dtype_or_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 300, 1000).astype(np.uint16), rng.integers(0, 300, 77).astype(np.uint16)
    monkeypatch.setattr(F, "_CHUNK", 64)  # many chunks, one of them partial
    fp = fingerprint(train, val, 300)
    assert fp.sha256 == _plain_sha(train, val, 300) and fp.method == "full" and fp.n_tokens == 1077
    assert fingerprint(train.astype(np.uint32), val.astype(np.int64), 300) == fp
    assert fp.short == fp.sha256[:16]


def test_every_token_and_the_vocabulary_matter():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, 500).astype(np.uint16)
    base = fingerprint(tokens[:400], tokens[400:], 256)
    changed = tokens.copy()
    changed[123] ^= 1
    assert fingerprint(changed[:400], changed[400:], 256).sha256 != base.sha256
    assert fingerprint(tokens[:400], tokens[400:], 257).sha256 != base.sha256


def test_a_long_stream_is_sampled_first_last_and_between(monkeypatch):
    monkeypatch.setattr(F, "_FULL_HASH_TOKENS", 100)
    monkeypatch.setattr(F, "_SAMPLE_TOKENS", 10)
    tokens = np.arange(1000, dtype=np.uint32) % 251
    fp = fingerprint(tokens[:900], tokens[900:], 251)
    assert fp.method == "sampled" and fp.n_tokens == 1000
    starts = np.linspace(0, 990, 66).astype(np.int64)
    h = hashlib.sha256(b"1000:251:")
    for s in starts:
        h.update(tokens[s:s + 10].astype(np.uint32).tobytes())  # a block across the split is hashed in pieces
    assert fp.sha256 == h.hexdigest()
    sampled = tokens.copy()
    sampled[20] += 1  # inside the second sampled block [15, 25)
    assert fingerprint(sampled[:900], sampled[900:], 251).sha256 != fp.sha256
    between = tokens.copy()
    between[12] += 1  # in no sampled block
    assert fingerprint(between[:900], between[900:], 251).sha256 == fp.sha256
