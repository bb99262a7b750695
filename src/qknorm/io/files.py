"""Small, careful file helpers shared by model files, training checkpoints and HF export.

`atomic_write_bytes` writes through a temporary file in the same directory, fsyncs it and renames it over the
target (then fsyncs the directory), so a crash never leaves a half-written file under the final name.
`read_json` / `read_safetensors` raise `CheckpointError` naming the file and what is wrong. `file_inside` /
`dir_inside` keep reads of model state inside the directory being loaded: a symlink or a relative path (`..`)
that leads out of it, or a file that is not a regular file (a FIFO or device would hang a reader), is refused.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Union

import torch

from ..errors import CheckpointError, UnsafeCheckpointError

__all__ = ["atomic_write_bytes", "fsync_dir", "write_synced", "read_json", "read_safetensors", "dir_inside",
           "file_inside"]


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory, fsync, then rename over the target."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write_synced(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_synced(path: Union[str, Path], data: bytes) -> None:
    """Write `data` to `path` and fsync the file (not the directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(d: Union[str, Path]) -> None:
    """fsync a directory so a rename in it is durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Union[str, Path], *, missing: str = "file not found") -> Any:
    """The JSON document in `path`; CheckpointError naming the file when it is missing or unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e.__class__.__name__}: {e})") from None


def read_safetensors(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def dir_inside(root: Union[str, Path], path: Union[str, Path]) -> Path:
    """`path` with symlinks resolved, when it is `root` or lies under it (`root` resolved too); else
    UnsafeCheckpointError naming `path`. A symlinked `root` itself is fine: it is the directory being loaded."""
    root, path = Path(root), Path(path)
    real_root, real = root.resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafeCheckpointError(f"{path}: leads outside {root} (to {real}); model state is read only from "
                                    "inside the directory being loaded")
    return real


def file_inside(root: Union[str, Path], rel: Union[str, Path]) -> Path:
    """The regular file `root/rel`, resolved, after checking that `rel` is a relative path without `..` and
    that no symlink on the way leads outside `root` (dir_inside); CheckpointError when it is missing or not a
    regular file."""
    root = Path(root)
    parts = PurePosixPath(str(rel)).parts
    if not parts or PurePosixPath(str(rel)).is_absolute() or Path(str(rel)).is_absolute() or ".." in parts:
        raise UnsafeCheckpointError(f"{root}: names the file {str(rel)!r}, which is not a path inside the directory "
                                    "(absolute, empty or with '..')")
    path = root / str(rel)
    real = dir_inside(root, path)
    try:
        mode = real.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise UnsafeCheckpointError(f"{path}: not a regular file (a directory, FIFO or device is never read as "
                                    "model state)")
    return real
