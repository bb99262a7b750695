"""The files that travel with a tokenizer: tokenizer.json, and beside it what a chat model's tokenizer adds.

    files = tokenizer_files(Path("hf_model/tokenizer.json"))   # {"tokenizer.json": b..., "chat_template.jinja": b...}
    copy_tokenizer_files(Path("hf_model/tokenizer.json"), out) # the same files, into out/

Hugging Face keeps a tokenizer's special tokens (eos_token, ...) and often its chat template in
tokenizer_config.json, and newer exports the template in chat_template.jinja (names.TOKENIZER_COMPANIONS).
`qknorm generate --chat` needs them, so wherever qknorm keeps a tokenizer.json (a run directory, every
checkpoint, `convert` in both directions) it keeps the companions found in the same directory too, byte for
byte. They are data: nothing here parses or runs them (chat_template.py renders a template in a sandbox).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List

from .names import TOKENIZER_COMPANIONS, TOKENIZER_NAME

__all__ = ["tokenizer_files", "copy_tokenizer_files"]


def _present(tokenizer: Path) -> List[tuple]:
    """(stored name, source path) of the tokenizer file and each regular companion file beside it."""
    pairs = [(TOKENIZER_NAME, tokenizer)]
    for name in TOKENIZER_COMPANIONS:
        p = tokenizer.parent / name
        if p.is_file() and not p.is_symlink():
            pairs.append((name, p))
    return pairs


def tokenizer_files(tokenizer: Path) -> Dict[str, bytes]:
    """{name: bytes} of `tokenizer` (stored as tokenizer.json whatever its file name) and its companions."""
    return {name: p.read_bytes() for name, p in _present(Path(tokenizer))}


def copy_tokenizer_files(tokenizer: Path, out: Path) -> List[str]:
    """Copy `tokenizer` (as out/tokenizer.json) and its companions into `out`; the names written."""
    names = []
    for name, p in _present(Path(tokenizer)):
        if p.resolve() != (out / name).resolve():
            shutil.copyfile(p, out / name)
        names.append(name)
    return names
