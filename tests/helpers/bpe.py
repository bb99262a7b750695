"""A tiny BPE tokenizer trained offline on a test corpus (the `tokenizers` library), saved as tokenizer.json.

Tests that need a real subword tokenizer (its vocabulary differs from 256 bytes) build one here instead of
downloading one."""
from __future__ import annotations

from pathlib import Path


def train_bpe_file(source: Path | list[Path], out: Path, vocab_size: int):
    """Train a byte-level BPE on the given files (or every file in a directory, sorted), save it to `out` and
    return the `tokenizers.Tokenizer`."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    files = sorted(source.iterdir()) if isinstance(source, Path) else source
    tok.train([str(p) for p in files],
              trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"], show_progress=False))
    tok.save(str(out))
    return tok


def train_chat_bpe(texts: list[str], vocab_size: int = 400, special_tokens=("<|im_end|>", "<|im_start|>")):
    """A byte-level BPE (with a ByteLevel decoder) trained on `texts`, with the chat markers as special tokens
    (ids 0, 1, ...: each encodes as one token wherever it appears in text)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok
