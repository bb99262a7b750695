"""Token data for training: where tokens come from, and how batches are cut from them.

Sources (`load_tokens(data, tokenizer=...)`):

* ``None`` — the embedded default corpus: the Python standard library's ``*.py`` sources of the running
  interpreter (see `default_corpus_files`). Present on every machine, nothing downloaded; deterministic on a
  given Python install (the source string names the Python version and directory).
* a text file — its bytes. A file that looks binary (NUL bytes, or more than 30% invalid UTF-8 in its
  first 64 KiB) is refused with a `DataError`.
* a directory — every regular, non-hidden file under it, recursively, in sorted relative-POSIX-path order;
  empty and binary-looking files are skipped (the source string counts them).
* a glob pattern (``"data/*.txt"``, ``"data/**/*.md"``; recursive ``**`` allowed) — the matching regular
  files in sorted order, treated like a directory's files. A string is a pattern only when no such path
  exists and it contains ``*``, ``?`` or ``[``.
* a pre-tokenized token file, read with ``np.memmap`` (never loaded whole):

  - ``*.bin``         raw little-endian **uint16** tokens, no header (the nanoGPT convention);
  - ``*.uint32.bin``  raw little-endian **uint32** tokens, no header;
  - ``*.npy``         a 1-D integer NumPy array (memory-mapped when it is uint16/uint32).

  The vocabulary size is ``max token + 1``, unless a sidecar JSON ``<file>.json`` (e.g.
  ``train.bin.json``) holds ``{"vocab_size": N}``, which is then trusted without a scan.

Tokenization of text: byte-level by default (vocab 256, token = byte value). With
``tokenizer="path/to/tokenizer.json"`` a Hugging Face tokenizer is used through the ``tokenizers``
library (imported only then; nothing is downloaded); special tokens are not added, and the vocabulary size
is the tokenizer's, added tokens included. Text is encoded per file in chunks of about 1 MiB split after
newlines, so the ids equal whole-text encoding except possibly at a chunk boundary.

Files are concatenated in order, each followed by the separator ``b"\\n\\n"``.

Split: the validation set is the **last** ``val_fraction`` of the token stream
(``n_val = floor(n * val_fraction)``), the training set everything before it — deterministic, no shuffling,
and no window ever crosses from train into val.

Batches (`Batcher`): the global batch of a step is a pure function of ``(seed, step)``, so resuming needs
no data-loader state, and under data parallelism rank ``r`` of ``w`` takes the contiguous block of rows
``[r*B/w, (r+1)*B/w)`` of that same global batch.
"""

from __future__ import annotations

import glob as _glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError, DataError
from .sources import (BINARY_SAMPLE_BYTES, DEFAULT_CORPUS_MAX_BYTES, FILE_SEPARATOR, binary_reason,
                      collect_text_files, default_corpus_description, default_corpus_files, files_under,
                      is_token_file, load_token_file, read_file, skip_note, stdlib_dir)
from .fingerprint import DataFingerprint, fingerprint
from .tokenizer import encode_texts, load_tokenizer, token_dtype

__all__ = ["BYTE_VOCAB_SIZE", "TokenData", "DataFingerprint", "load_tokens"]

BYTE_VOCAB_SIZE = 256


@dataclass
class TokenData:
    """A token stream split into training and validation parts.

    `train` and `val` are 1-D integer arrays (``np.uint16`` when ``vocab_size <= 65536``, else
    ``np.uint32``; possibly ``np.memmap`` views of a token file). `source` describes the data for people;
    `spec`, `tokenizer`, `max_bytes` and `val_fraction` say how it was loaded (the data argument as an absolute
    path, None for the embedded corpus; the tokenizer file), so a run can record it and load it again.
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    source: str
    spec: Optional[str] = None
    tokenizer: Optional[str] = None
    max_bytes: Optional[int] = None  # the load_tokens arguments that shaped the stream
    val_fraction: float = 0.05

    @property
    def n_tokens(self) -> int:
        return int(len(self.train) + len(self.val))

    def fingerprint(self) -> DataFingerprint:
        """The stream's identity (train then val, as one array), for a run's record and a study's runs."""
        return fingerprint(self.train, self.val, self.vocab_size)


def load_tokens(
    data: str | os.PathLike | None = None,
    *,
    tokenizer: str | os.PathLike | None = None,
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
) -> TokenData:
    """Load and split the token stream of `data` (see the module docstring for every kind of source).

    `max_bytes` bounds how much is read: for the default corpus it is the byte budget of whole files
    (default `DEFAULT_CORPUS_MAX_BYTES`); for user text the total bytes read (the last file may be cut);
    for a token file the first ``max_bytes // itemsize`` tokens. Raises `DataError` (one line naming the
    path and the problem) for data that cannot be used, `ConfigError` for impossible arguments.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_bytes is not None and max_bytes <= 0:
        raise ConfigError(f"max_bytes must be a positive number of bytes, got {max_bytes}")

    texts: list[tuple[Path, bytes]]
    if data is None:
        budget = DEFAULT_CORPUS_MAX_BYTES if max_bytes is None else max_bytes
        files = default_corpus_files(budget)
        if not files:
            raise DataError(
                f"default corpus: no readable Python standard-library sources under {stdlib_dir()}"
                f" within max_bytes={budget}; pass a data path"
            )
        texts = [(p, read_file(p)) for p in files]
        source = default_corpus_description(files, sum(len(b) for _, b in texts))
    else:
        spec = os.fspath(data)
        path = Path(spec)
        if path.exists():
            if path.is_dir():
                texts, skipped = collect_text_files(files_under(path), max_bytes)
                if not texts:
                    raise DataError(f"directory {path} holds no non-empty text files{skip_note(skipped)}")
                source = f"{len(texts)} text files under {path}{skip_note(skipped)}"
            elif is_token_file(path):
                if tokenizer is not None:
                    raise DataError(
                        f"{path} is already tokenized; a tokenizer applies only to text data"
                        f" (give the vocabulary size in {path.name}.json as {{\"vocab_size\": N}})"
                    )
                arr, vocab, source = load_token_file(path, max_bytes)
                return _split(arr, vocab, source, val_fraction, os.path.abspath(spec), None, max_bytes)
            else:
                content = read_file(path, max_bytes)
                if not content:
                    raise DataError(f"{path} is empty")
                reason = binary_reason(content[:BINARY_SAMPLE_BYTES])
                if reason is not None:
                    raise DataError(f"{path} {reason}; expected a text file (or a *.bin / *.npy token file)")
                texts = [(path, content)]
                source = f"text file {path}"
        elif any(c in spec for c in "*?["):
            matches = sorted(p for p in _glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"pattern {spec} matched no files")
            texts, skipped = collect_text_files([Path(m) for m in matches], max_bytes)
            if not texts:
                raise DataError(f"pattern {spec} matched no non-empty text files{skip_note(skipped)}")
            source = f"{len(texts)} text files matching {spec}{skip_note(skipped)}"
        else:
            raise DataError(f"data path {spec} does not exist")

    n_bytes = sum(len(b) for _, b in texts)
    if data is not None:
        source += f" ({n_bytes / 1e6:.2f} MB)"
    if tokenizer is None:
        stream = FILE_SEPARATOR.join(b for _, b in texts) + FILE_SEPARATOR
        arr = np.frombuffer(stream, dtype=np.uint8).astype(np.uint16)
        vocab = BYTE_VOCAB_SIZE
        source += f", byte-level tokens (vocab {vocab})"
        tok_file = None
    else:
        tok, tok_path = load_tokenizer(tokenizer)
        tok_file = os.path.abspath(tok_path)
        sep = FILE_SEPARATOR.decode()
        ids = encode_texts(tok, [b.decode("utf-8", errors="replace") + sep for _, b in texts])
        if len(ids) == 0:
            raise DataError(f"tokenizer {tok_path} produced no tokens for {source}")
        vocab = max(int(tok.get_vocab_size(with_added_tokens=True)), int(ids.max()) + 1)
        arr = ids.astype(token_dtype(vocab))
        source += f", tokenizer {tok_path} (vocab {vocab})"
    spec_abs = None if data is None else os.path.abspath(os.fspath(data))
    return _split(arr, vocab, source, val_fraction, spec_abs, tok_file, max_bytes)


def _split(arr: np.ndarray, vocab: int, source: str, val_fraction: float, spec: Optional[str],
           tokenizer: Optional[str], max_bytes: Optional[int]) -> TokenData:
    n_val = int(len(arr) * val_fraction)
    n_train = len(arr) - n_val
    return TokenData(train=arr[:n_train], val=arr[n_train:], vocab_size=int(vocab), source=source, spec=spec,
                     tokenizer=tokenizer, max_bytes=max_bytes, val_fraction=val_fraction)
