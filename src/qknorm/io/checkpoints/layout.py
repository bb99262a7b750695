"""The on-disk layout of a run's checkpoints, shared by the full and the sharded format.

    checkpoints/
      step_0000020/            one complete checkpoint (the number = optimizer steps done = next step index)
        meta.json              what it holds (format, step, configs, extras) and size + sha256 of every file
        ...                    the format's files (full.py, sharded.py)
      step_0000030/
      latest                   "step_0000030": the newest checkpoint written (informational)

A checkpoint is written into `.tmp-step_XXXXXXX...`, fsynced, then `publish`ed by one rename, so a crash at any
point leaves either the previous set of checkpoints or the new one complete; a temp directory is never a
candidate and is removed by the next save. `publish` then rewrites `latest` atomically and prunes to the
newest `keep_last`.

TEST-ONLY hook (the kill tests): with QKNORM_TEST_PAUSE_IN_CHECKPOINT_WRITE=<step> in the environment, the
writer of checkpoint <step> sleeps (up to 10 minutes) part-way through, so a test can SIGKILL the process
mid-write (full.py: after its first file; sharded.py: when the temp directory is complete, before the rename).
Never set it outside tests.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from ...config import ModelConfig
from ...errors import CheckpointError, ConfigError, UnsafeCheckpointError
from ..files import atomic_write_bytes, file_inside, fsync_dir
from ..names import CKPT_DIR

__all__ = ["CKPT_DIR", "LATEST", "META", "PAUSE_ENV", "Checkpoint", "CheckpointMismatch", "checkpoint_name",
           "list_checkpoints", "publish", "remove_stale_temps", "check_same_config", "sha256", "file_digest",
           "torch_bytes", "move_aside", "check_names_inside"]

LATEST = "latest"
META = "meta.json"
PAUSE_ENV = "QKNORM_TEST_PAUSE_IN_CHECKPOINT_WRITE"
_NAME = re.compile(r"^step_(\d{7,})$")


class CheckpointMismatch(CheckpointError):
    """The checkpoint is intact but was saved from a different model config (never a reason to fall back)."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded, verified checkpoint (a sharded one has empty states: they were loaded into the model)."""

    path: Path
    step: int  # optimizer steps done; training resumes at this 0-based step index
    model_state: Dict[str, torch.Tensor]
    optimizer_state: Dict[str, Any]
    rng_state: Dict[str, Any]
    train_config: Dict[str, Any]
    extra: Dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(root: str | Path) -> List[Tuple[int, Path]]:
    """Complete checkpoint directories under `root` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def remove_stale_temps(root: Path) -> None:
    """Delete the temp directories a crash mid-write left behind."""
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def publish(tmp: Path, root: Path, name: str, step: int, keep_last: int) -> Path:
    """Make the complete, fsynced checkpoint directory `tmp` the checkpoint `root/name` by one rename, point
    LATEST at it, and prune to the newest `keep_last`. A kill before the rename leaves only a temp dir
    (ignored by readers); after it, the new checkpoint is whole."""
    final = root / name
    if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
        aside = root / f".tmp-old-{name}-{os.getpid()}"
        os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_bytes(root / LATEST, (name + "\n").encode())
    _prune(root, step, keep_last)
    return final


def _prune(root: Path, newest: int, keep_last: int) -> None:
    older = [(s, p) for s, p in list_checkpoints(root) if s <= newest]
    for _, path in older[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def move_aside(path: Path) -> str:
    """Rename a damaged checkpoint to `<name>.corrupt` (so pruning never counts it); '' if that failed."""
    aside = path.with_name(f"{path.name}.corrupt")
    try:
        if aside.exists():
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        return f"; moved to {aside.name}"
    except OSError:
        return ""


def check_same_config(saved: Dict[str, Any], model_config: ModelConfig, *, source: str) -> None:
    """Raise CheckpointMismatch naming the first field where `saved` differs from `model_config`. The saved
    config is read through ModelConfig first, so a config written by an earlier version in an older form
    (e.g. `rope_scaling: 8.0` for linear scaling) compares as the model it describes."""
    try:
        saved = ModelConfig.from_dict(saved, source=source).to_dict()
    except (ConfigError, TypeError):
        pass  # compared field by field below, which names what differs
    current = model_config.to_dict()
    for key in current:
        if key not in saved:
            raise CheckpointMismatch(f"{source}: saved model config lacks field {key!r}; it was written by another "
                                     "version or is not a qknorm checkpoint")
        if saved[key] != current[key]:
            raise CheckpointMismatch(f"{source}: checkpoint was saved with {key}={saved[key]!r}, this run has "
                                     f"{key}={current[key]!r} (a checkpoint resumes only the same model config)")
    extra = sorted(set(saved) - set(current))
    if extra:
        raise CheckpointMismatch(f"{source}: saved model config has unknown field {extra[0]!r}")


def check_names_inside(path: Path, files: Dict[str, Any]) -> None:
    """UnsafeCheckpointError when a file name of meta.json's table (or a symlink on its way) leads outside the
    checkpoint directory `path`, or names something that is not a regular file; a missing file is left to the
    size and checksum check, which reports it as damage."""
    for rel in files:
        try:
            file_inside(path, rel)
        except UnsafeCheckpointError:
            raise
        except CheckpointError:
            pass


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> Dict[str, Any]:
    """{size, sha256} of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
