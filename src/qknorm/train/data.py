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

import codecs
import glob as _glob
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qknorm.errors import ConfigError, DataError

__all__ = [
    "BYTE_VOCAB_SIZE",
    "DEFAULT_CORPUS_MAX_BYTES",
    "FILE_SEPARATOR",
    "Batcher",
    "TokenData",
    "default_corpus_bytes",
    "default_corpus_files",
    "load_tokens",
]

BYTE_VOCAB_SIZE = 256
DEFAULT_CORPUS_MAX_BYTES = 6_000_000
FILE_SEPARATOR = b"\n\n"

_DEFAULT_CORPUS_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)
_BINARY_SAMPLE_BYTES = 64 * 1024
_MAX_INVALID_UTF8_FRACTION = 0.30
_ENCODE_CHUNK_CHARS = 1 << 20
_SCAN_CHUNK_TOKENS = 1 << 24


@dataclass
class TokenData:
    """A token stream split into training and validation parts.

    `train` and `val` are 1-D integer arrays (``np.uint16`` when ``vocab_size <= 65536``, else
    ``np.uint32``; possibly ``np.memmap`` views of a token file). `source` describes the data for people.
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    source: str

    @property
    def n_tokens(self) -> int:
        return int(len(self.train) + len(self.val))


# --------------------------------------------------------------------------------------------------
# The embedded default corpus


def _stdlib_dir() -> Path:
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
    root = _stdlib_dir()
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
        parts.append(_read_file(path))
        parts.append(FILE_SEPARATOR)
    return b"".join(parts)


def _default_corpus_description(files: list[Path], n_bytes: int) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    return (
        f"default corpus: {len(files)} Python {version} standard-library *.py files under {_stdlib_dir()}"
        f" ({n_bytes / 1e6:.2f} MB)"
    )


# --------------------------------------------------------------------------------------------------
# Reading text


def _read_file(path: Path, limit: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except IsADirectoryError:
        raise DataError(f"cannot read {path}: it is a directory") from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _binary_reason(sample: bytes) -> str | None:
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


def _collect_text_files(paths: list[Path], budget: int | None) -> tuple[list[tuple[Path, bytes]], list[str]]:
    """Read the text files among `paths` (in order) up to `budget` bytes; returns (files, skip notes)."""
    out: list[tuple[Path, bytes]] = []
    skipped: list[str] = []
    remaining = budget
    for path in paths:
        if remaining is not None and remaining <= 0:
            break
        sample = _read_file(path, _BINARY_SAMPLE_BYTES)
        if not sample:
            skipped.append(f"{path} (empty)")
            continue
        reason = _binary_reason(sample)
        if reason is not None:
            skipped.append(f"{path} ({reason})")
            continue
        content = _read_file(path, remaining)
        out.append((path, content))
        if remaining is not None:
            remaining -= len(content)
    return out, skipped


def _files_under(directory: Path) -> list[Path]:
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


def _skip_note(skipped: list[str]) -> str:
    if not skipped:
        return ""
    shown = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return f" (skipped {len(skipped)}: {shown})"


# --------------------------------------------------------------------------------------------------
# Tokenizers


def _load_tokenizer(path: str | os.PathLike):
    p = Path(path)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        p = p / "tokenizer.json"
    if not p.exists():
        raise DataError(f"tokenizer {p}: file not found")
    if p.is_dir():
        raise DataError(f"tokenizer {p}: is a directory without a tokenizer.json")
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


def _encode(tok, texts: list[str]) -> np.ndarray:
    ids: list[int] = []
    for text in texts:
        for enc in tok.encode_batch(_chunks_after_newlines(text), add_special_tokens=False):
            ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


def _token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


# --------------------------------------------------------------------------------------------------
# Pre-tokenized token files


def _is_token_file(path: Path) -> bool:
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
        meta = json.loads(_read_file(sidecar).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {sidecar}: not valid JSON ({e})") from None
    vocab = meta.get("vocab_size") if isinstance(meta, dict) else None
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        raise DataError(f"{sidecar}: expected a JSON object with a positive integer 'vocab_size'")
    return vocab, sidecar


def _load_token_file(path: Path, max_bytes: int | None) -> tuple[np.ndarray, int, str]:
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
        arr = np.asarray(arr, dtype=_token_dtype(hi + 1))
    vocab, sidecar = _sidecar_vocab(path)
    if vocab is None:
        vocab = _scan_max(arr) + 1
        vocab_note = "max token + 1"
    else:
        vocab_note = f"from {sidecar.name}"
    source = f"token file {path} ({kind}, {len(arr):,} tokens, vocab {vocab} {vocab_note})"
    return arr, vocab, source


# --------------------------------------------------------------------------------------------------
# The entry point


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
                f"default corpus: no readable Python standard-library sources under {_stdlib_dir()}"
                f" within max_bytes={budget}; pass a data path"
            )
        texts = [(p, _read_file(p)) for p in files]
        source = _default_corpus_description(files, sum(len(b) for _, b in texts))
    else:
        spec = os.fspath(data)
        path = Path(spec)
        if path.exists():
            if path.is_dir():
                texts, skipped = _collect_text_files(_files_under(path), max_bytes)
                if not texts:
                    raise DataError(f"directory {path} holds no non-empty text files{_skip_note(skipped)}")
                source = f"{len(texts)} text files under {path}{_skip_note(skipped)}"
            elif _is_token_file(path):
                if tokenizer is not None:
                    raise DataError(
                        f"{path} is already tokenized; a tokenizer applies only to text data"
                        f" (give the vocabulary size in {path.name}.json as {{\"vocab_size\": N}})"
                    )
                arr, vocab, source = _load_token_file(path, max_bytes)
                return _split(arr, vocab, source, val_fraction)
            else:
                content = _read_file(path, max_bytes)
                if not content:
                    raise DataError(f"{path} is empty")
                reason = _binary_reason(content[:_BINARY_SAMPLE_BYTES])
                if reason is not None:
                    raise DataError(f"{path} {reason}; expected a text file (or a *.bin / *.npy token file)")
                texts = [(path, content)]
                source = f"text file {path}"
        elif any(c in spec for c in "*?["):
            matches = sorted(p for p in _glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"pattern {spec} matched no files")
            texts, skipped = _collect_text_files([Path(m) for m in matches], max_bytes)
            if not texts:
                raise DataError(f"pattern {spec} matched no non-empty text files{_skip_note(skipped)}")
            source = f"{len(texts)} text files matching {spec}{_skip_note(skipped)}"
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
    else:
        tok, tok_path = _load_tokenizer(tokenizer)
        sep = FILE_SEPARATOR.decode()
        ids = _encode(tok, [b.decode("utf-8", errors="replace") + sep for _, b in texts])
        if len(ids) == 0:
            raise DataError(f"tokenizer {tok_path} produced no tokens for {source}")
        vocab = max(int(tok.get_vocab_size(with_added_tokens=True)), int(ids.max()) + 1)
        arr = ids.astype(_token_dtype(vocab))
        source += f", tokenizer {tok_path} (vocab {vocab})"
    return _split(arr, vocab, source, val_fraction)


def _split(arr: np.ndarray, vocab: int, source: str, val_fraction: float) -> TokenData:
    n_val = int(len(arr) * val_fraction)
    n_train = len(arr) - n_val
    return TokenData(train=arr[:n_train], val=arr[n_train:], vocab_size=int(vocab), source=source)


# --------------------------------------------------------------------------------------------------
# Batches


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class Batcher:
    """Random training windows and fixed evaluation windows from a 1-D token array.

    `batch(step)` returns ``(x, y)``, int64 tensors of shape ``(batch_size // world_size, seq_len)`` with
    ``y[:, t] = x[:, t + 1]`` in the token stream. The global batch of a step is `batch_size` windows whose
    start offsets are drawn uniformly from ``[0, n - seq_len - 1]`` by ``np.random.default_rng([seed,
    step])`` — a pure function of (seed, step, the tokens), so a resumed run needs no loader state. Rank
    `rank` takes the contiguous rows ``[rank * b, (rank + 1) * b)``, ``b = batch_size // world_size``, so
    concatenating the ranks' batches in rank order gives the single-process batch exactly.

    `name` is used in error messages (e.g. ``"validation split"``).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        name: str = "token data",
    ):
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.seed = _check_int("seed", seed, 0)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size (the global batch, {self.batch_size}) must be divisible by the number of"
                f" processes ({self.world_size})"
            )
        if getattr(tokens, "ndim", None) != 1:
            raise DataError(f"{name}: expected a 1-D token array, got shape {getattr(tokens, 'shape', None)}")
        self.tokens = tokens
        self.name = name
        self.n_tokens = int(len(tokens))
        if self.n_tokens < self.seq_len + 1:
            raise DataError(
                f"{name}: {self.n_tokens} tokens is shorter than one training sequence"
                f" (seq_len={self.seq_len} needs at least {self.seq_len + 1} tokens)"
            )
        self.local_batch_size = self.batch_size // self.world_size

    def _local(self, offsets: np.ndarray) -> np.ndarray:
        b = self.local_batch_size
        return offsets[self.rank * b : (self.rank + 1) * b]

    def _gather(self, offsets: np.ndarray):
        import torch

        idx = offsets[:, None] + np.arange(self.seq_len + 1)
        windows = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def global_offsets(self, step: int) -> np.ndarray:
        """Start offsets of the `batch_size` windows of the global batch of `step` (all ranks)."""
        step = _check_int("step", step, 0)
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.n_tokens - self.seq_len, size=self.batch_size, dtype=np.int64)

    def batch(self, step: int):
        """This rank's ``(x, y)`` of the global batch of `step`."""
        return self._gather(self._local(self.global_offsets(step)))

    def val_batches(self, n_batches: int) -> list:
        """`n_batches` fixed evaluation batches (this rank's rows): ``n_batches * batch_size`` windows whose
        start offsets are spread evenly over the whole token array (``np.linspace`` from the first to the
        last possible offset, rounded), independent of the seed. Windows overlap when the array is short."""
        n_batches = _check_int("n_batches", n_batches, 1)
        offsets = np.linspace(0, self.n_tokens - self.seq_len - 1, num=n_batches * self.batch_size)
        offsets = np.rint(offsets).astype(np.int64).reshape(n_batches, self.batch_size)
        return [self._gather(self._local(row)) for row in offsets]
