"""Where benchmark results go: `--out DIR` only (never an environment variable), checked before anything runs.

A benchmark takes minutes of a GPU; finding out at the end that its results cannot be written, or that they
replaced last week's, loses them. So `check_out` runs first: DIR must be a folder or creatable, and none of
the files the benchmark will write may exist there unless --force. Without --out a benchmark prints only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ConfigError


def check_out(out: Optional[str], names: Iterable[str], *, force: bool) -> Optional[Path]:
    """The output folder, or None without --out; ConfigError naming --out or --force if the results could not
    be written there. Creates nothing: the folder is made when the first result is written."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    existing = [n for n in names if (path / n).exists()]
    if existing and not force:
        raise ConfigError(f"--out {out}: {', '.join(existing)} already there; choose another folder or pass --force "
                          f"to replace")
    parent = path
    while not parent.exists():  # the nearest existing folder must let us create the rest
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write there ({parent} is not a writable folder)")
    return path


def write_json(path: Path, obj: dict) -> None:
    """Write through a temporary file, so a run killed mid-write leaves the previous complete version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
