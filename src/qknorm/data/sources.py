"""Where training text and tokens come from: the embedded default corpus, text files, directories, globs, and
pre-tokenized token files (the rules are in data/tokens.py's docstring; this module reads the bytes).

* default corpus: the Python standard library's ``*.py`` sources of the running interpreter, sorted by relative
  path, cut to a byte budget of whole files — present on every machine, nothing downloaded.
* text: binary-looking files (NUL bytes, or more than 30% invalid UTF-8 in their first 64 KiB) are refused or,
  inside a directory or glob, skipped and counted.
* token files: ``*.bin`` (uint16), ``*.uint32.bin``, ``*.npy``, memory-mapped; the vocabulary is ``max token +
  1`` unless a sidecar ``<file>.json`` holds ``{"vocab_size": N}``.
All errors are `DataError` lines naming the path.
"""

from __future__ import annotations

import codecs
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .tokenizer import token_dtype

__all__ = ["DEFAULT_CORPUS_MAX_BYTES", "FILE_SEPARATOR", "BINARY_SAMPLE_BYTES", "stdlib_dir", "default_corpus_files",
           "default_corpus_bytes", "default_corpus_description", "read_file", "binary_reason",
           "collect_text_files", "files_under", "skip_note", "is_token_file", "load_token_file"]

DEFAULT_CORPUS_MAX_BYTES = 6_000_000
FILE_SEPARATOR = b"\n\n"

_DEFAULT_CORPUS_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)
BINARY_SAMPLE_BYTES = 64 * 1024
_MAX_INVALID_UTF8_FRACTION = 0.30
_SCAN_CHUNK_TOKENS = 1 << 24


# --------------------------------------------------------------------------------------------------
# The embedded default corpus


def stdlib_dir() -> Path:
    return Path(os.__file__).resolve().parent


def default_corpus_files(max_bytes: int = DEFAULT_CORPUS_MAX_BYTES) -> list[Path]:
    """The files of the embedded default corpus, in corpus order.

    The Python standard library's ``*.py`` sources (the directory of ``os.__file__``), skipping the
    ``site-packages``, ``dist-packages``, ``test``, ``tests``, ``idlelib``, ``lib2to3`` and ``__pycache__``
    directories and files that cannot be read; sorted by path relative to that directory (POSIX form), and
    cut to the longest prefix of that list whose total size is at most `max_bytes` (whole files only).
    """
    if max_bytes <= 0:
        raise ConfigError(f"max_bytes must be a positive number of bytes, got {max_bytes}")
    root = stdlib_dir()
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in _DEFAULT_CORPUS_EXCLUDED_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                found.append((path.relative_to(root).as_posix(), path))
    found.sort()
    files: list[Path] = []
    total = 0
    for _, path in found:
        try:
            if not path.is_file() or not os.access(path, os.R_OK):
                continue
            size = path.stat().st_size
        except OSError:
            continue
        if total + size > max_bytes:
            break
        files.append(path)
        total += size
    return files


def default_corpus_bytes(max_bytes: int = DEFAULT_CORPUS_MAX_BYTES) -> bytes:
    """The default corpus as one byte string: each of `default_corpus_files` followed by ``b"\\n\\n"``."""
    parts = []
    for path in default_corpus_files(max_bytes):
        parts.append(read_file(path))
        parts.append(FILE_SEPARATOR)
    return b"".join(parts)


def default_corpus_description(files: list[Path], n_bytes: int) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    return (
        f"default corpus: {len(files)} Python {version} standard-library *.py files under {stdlib_dir()}"
        f" ({n_bytes / 1e6:.2f} MB)"
    )

# --------------------------------------------------------------------------------------------------
# Reading text


def read_file(path: Path, limit: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except IsADirectoryError:
        raise DataError(f"cannot read {path}: it is a directory") from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def binary_reason(sample: bytes) -> str | None:
    """Why `sample` (the start of a file) does not look like text, or None if it does."""
    if b"\x00" in sample:
        return "contains NUL bytes"
    if not sample:
        return None
    decoded = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(sample, final=False)
    invalid = decoded.count("\ufffd")
    if invalid > _MAX_INVALID_UTF8_FRACTION * len(sample):
        return f"is not UTF-8 text ({100 * invalid / len(sample):.0f}% invalid bytes)"
    return None


def collect_text_files(paths: list[Path], budget: int | None) -> tuple[list[tuple[Path, bytes]], list[str]]:
    """Read the text files among `paths` (in order) up to `budget` bytes; returns (files, skip notes)."""
    out: list[tuple[Path, bytes]] = []
    skipped: list[str] = []
    remaining = budget
    for path in paths:
        if remaining is not None and remaining <= 0:
            break
        sample = read_file(path, BINARY_SAMPLE_BYTES)
        if not sample:
            skipped.append(f"{path} (empty)")
            continue
        reason = binary_reason(sample)
        if reason is not None:
            skipped.append(f"{path} ({reason})")
            continue
        content = read_file(path, remaining)
        out.append((path, content))
        if remaining is not None:
            remaining -= len(content)
    return out, skipped


def files_under(directory: Path) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            if path.is_file():
                found.append((path.relative_to(directory).as_posix(), path))
    found.sort()
    return [p for _, p in found]


def skip_note(skipped: list[str]) -> str:
    if not skipped:
        return ""
    shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return f" (skipped {len(skipped)}: {shown})"

# --------------------------------------------------------------------------------------------------
# Pre-tokenized token files


def is_token_file(path: Path) -> bool:
    return path.name.lower().endswith((".bin", ".npy"))


def _scan_max(arr: np.ndarray) -> int:
    best = 0
    for start in range(0, len(arr), _SCAN_CHUNK_TOKENS):
        best = max(best, int(np.max(arr[start : start + _SCAN_CHUNK_TOKENS])))
    return best


def _sidecar_vocab(path: Path) -> tuple[int | None, Path]:
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.exists():
        return None, sidecar
    try:
        meta = json.loads(read_file(sidecar).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {sidecar}: not valid JSON ({e})") from None
    vocab = meta.get("vocab_size") if isinstance(meta, dict) else None
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        raise DataError(f"{sidecar}: expected a JSON object with a positive integer 'vocab_size'")
    return vocab, sidecar


def load_token_file(path: Path, max_bytes: int | None) -> tuple[np.ndarray, int, str]:
    name = path.name.lower()
    if name.endswith(".npy"):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except PermissionError:
            raise DataError(f"cannot read {path}: permission denied") from None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: not a valid .npy file ({e})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise DataError(f"{path}: expected a 1-D integer token array, got shape {arr.shape} dtype {arr.dtype}")
        kind = str(arr.dtype)
    else:
        dtype = np.dtype("<u4") if name.endswith(".uint32.bin") else np.dtype("<u2")
        kind = "uint32" if dtype.itemsize == 4 else "uint16"
        try:
            size = path.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
        if size % dtype.itemsize:
            hint = "" if kind == "uint32" else "; uint32 token files must be named *.uint32.bin"
            raise DataError(
                f"{path}: size {size} bytes is not a multiple of {dtype.itemsize} ({kind} tokens){hint}"
            )
        if size == 0:
            raise DataError(f"{path}: token file is empty")
        if not os.access(path, os.R_OK):
            raise DataError(f"cannot read {path}: permission denied")
        try:
            arr = np.memmap(path, dtype=dtype, mode="r")
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if len(arr) == 0:
        raise DataError(f"{path}: token file is empty")
    if max_bytes is not None:
        arr = arr[: max(1, max_bytes // arr.dtype.itemsize)]
    if arr.dtype not in (np.dtype("<u2"), np.dtype("<u4")):
        lo, hi = int(np.min(arr)), int(np.max(arr))
        if lo < 0 or hi >= 1 << 32:
            raise DataError(f"{path}: token ids must lie in [0, 2**32), found {lo}..{hi}")
        arr = np.asarray(arr, dtype=token_dtype(hi + 1))
    vocab, sidecar = _sidecar_vocab(path)
    if vocab is None:
        vocab = _scan_max(arr) + 1
        vocab_note = "max token + 1"
    else:
        vocab_note = f"from {sidecar.name}"
    source = f"token file {path} ({kind}, {len(arr):,} tokens, vocab {vocab} {vocab_note})"
    return arr, vocab, source
