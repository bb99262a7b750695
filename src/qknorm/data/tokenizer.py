"""Hugging Face tokenizers for text data, through the `tokenizers` library (imported only when used; nothing is
downloaded). Text is encoded per file in chunks of about 1 MiB split after newlines, so the ids equal
whole-text encoding except possibly at a chunk boundary; special tokens are not added.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io.names import TOKENIZER_NAME

__all__ = ["load_tokenizer", "encode_texts", "token_dtype"]

_ENCODE_CHUNK_CHARS = 1 << 20


def load_tokenizer(path: str | os.PathLike):
    p = Path(path)
    if p.is_dir() and (p / TOKENIZER_NAME).is_file():
        p = p / TOKENIZER_NAME
    if not p.exists():
        raise DataError(f"tokenizer {p}: file not found")
    if p.is_dir():
        raise DataError(f"tokenizer {p}: is a directory without a {TOKENIZER_NAME}")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(
            f"tokenizer {p}: the 'tokenizers' package is not installed (pip install 'qknorm[tokenizers]')"
        ) from None
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # the library raises plain Exception subclasses with multi-line messages
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read tokenizer {p}: {first}") from None
    return tok, p


def _chunks_after_newlines(text: str, size: int | None = None) -> list[str]:
    size = size or _ENCODE_CHUNK_CHARS
    chunks = []
    start = 0
    while start < len(text):
        end = start + size
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut >= start else end
        chunks.append(text[start:end])
        start = end
    return chunks


def encode_texts(tok, texts: list[str]) -> np.ndarray:
    ids: list[int] = []
    for text in texts:
        for enc in tok.encode_batch(_chunks_after_newlines(text), add_special_tokens=False):
            ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype that holds ids below `vocab_size` (uint16 or uint32)."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32
