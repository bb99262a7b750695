"""The multi-process checkpoint format: every rank writes its own shards (torch.distributed.checkpoint).

A run under torchrun with more than one process writes **sharded** checkpoints in parallel, nothing gathered
on one rank; they live beside the full ones under the same names (layout.py), so listing, `latest` and pruning
are shared:

    step_0000020/              a sharded (DCP) checkpoint
      state/.metadata          torch.distributed.checkpoint: the global layout of every tensor
      state/__<r>_0.distcp     rank r's shards of {"model": ..., "optim": ...} (DTensor shards under FSDP
                               and TP; under DDP each replicated tensor is written once, by one rank)
      rng.pt                   rank 0's RNG states
      tokenizer.json           the run's tokenizer, when it has one
      meta.json                {"format": "dcp", step, world_size, parallel, tp, model and training config,
                                extras, and size + sha256 of every file above}

Writing (`save_sharded`, collective): all ranks write into `.tmp-step_XXXXXXX-dcp/` (files fsynced by DCP);
after a barrier the files are hashed (rank r hashes every world_size-th file), rank 0 writes rng.pt and
meta.json, renames the directory to its final name, fsyncs, points `latest` at it and prunes; a last
barrier. A crash at any point leaves the earlier checkpoints untouched and at most a `.tmp-*` directory.
With layout.PAUSE_ENV=<step> every rank sleeps once the temp directory of checkpoint <step> is complete but
before rank 0 renames it (test-only).

Reading (`load_sharded`, collective): DCP reshards, so a run saved by N processes resumes under any M (M = 1
included, without a process group), with any `parallel` and tensor-parallel degree (tensors are matched by
name and global offsets, whatever mesh wrote them). Damage (missing meta.json, a size or checksum mismatch) is
agreed on by all ranks and raised as CheckpointError; a different model config raises CheckpointMismatch.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from ...config import ModelConfig
from ...errors import CheckpointError, UnsafeCheckpointError
from ..dcp_reader import load_dcp, read_checked_metadata
from ..files import file_inside, fsync_dir, read_json, write_synced
from ..safe_pickle import load_torch
from .collective import Collective
from .layout import (META, PAUSE_ENV, Checkpoint, CheckpointMismatch, check_names_inside, check_same_config,
                     checkpoint_name, file_digest, publish, remove_stale_temps, torch_bytes)
from .rng import capture_rng_state

__all__ = ["DCP_FORMAT", "save_sharded", "load_sharded", "is_sharded", "read_sharded_meta", "verify_sharded",
           "load_verified_sharded", "read_rng", "broadcast", "all_gather"]

DCP_FORMAT = "dcp"
FORMAT_VERSION = 1
STATE_DIR, RNG_FILE = "state", "rng.pt"


def _dist_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def broadcast(rt: Collective, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (identity in a single process)."""
    return rt.broadcast_object(obj) if rt.world_size > 1 else obj


def all_gather(rt: Collective, obj: Any) -> List[Any]:
    return rt.all_gather_object(obj) if rt.world_size > 1 else [obj]


def read_on_every_rank(rt: Collective, read: Callable[[], Any]) -> Any:
    """`read()` on every rank; a CheckpointError on any rank is raised on all of them (the first one's message), so
    no rank goes on to a collective the others skip. Mismatch and unsafe-file errors are the same on every rank
    (each raises its own)."""
    value, err = None, None
    try:
        value = read()
    except (CheckpointMismatch, UnsafeCheckpointError):
        raise
    except CheckpointError as e:
        err = str(e)
    errors = [e for e in all_gather(rt, err) if e]
    if errors:
        raise CheckpointError(errors[0])
    return value


def _digest_files(rt: Collective, root: Path, rel_paths: List[str]) -> Dict[str, Dict[str, Any]]:
    """{rel: {size, sha256}} for `rel_paths` under `root`, rank r hashing every world_size-th file.

    A file that cannot be read gets {"error": "..."}; every rank returns the same merged dict.
    """
    mine: Dict[str, Dict[str, Any]] = {}
    for rel in rel_paths[rt.rank::rt.world_size]:
        try:
            mine[rel] = file_digest(root / rel)
        except OSError as e:
            mine[rel] = {"error": e.strerror or str(e)}
    merged: Dict[str, Dict[str, Any]] = {}
    for part in all_gather(rt, mine):
        merged.update(part)
    return merged


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)  # sharded (DTensor) under FSDP, plain under DDP / one process
    return {"model": msd, "optim": osd}


def is_sharded(path: str | Path) -> bool:
    """Whether checkpoint directory `path` is a sharded (DCP) one (judged by its meta.json)."""
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == DCP_FORMAT



def save_sharded(root: str | Path, step: int, rt: Collective, model: nn.Module,
                 optimizer: torch.optim.Optimizer, *, model_config: ModelConfig, train_config: Dict[str, Any],
                 extra: Optional[Dict[str, Any]] = None, rng_state: Optional[Dict[str, Any]] = None, keep_last: int = 3,
                 files: Optional[Dict[str, bytes]] = None) -> Path:
    """Write sharded checkpoint `step` under `root` (collective: every rank calls it); returns its path.
    `files`: more files rank 0 stores in it as they are (e.g. the run's tokenizer.json), checksummed."""
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    name = checkpoint_name(step)
    tmp = root / f".tmp-{name}-dcp"
    if rt.is_main:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(root)  # left by a crash mid-write
        tmp.mkdir()
    rt.barrier()
    state = _dcp_state(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process.*")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp / STATE_DIR), sync_files=True),
                 no_dist=not _dist_active())
    rt.barrier()
    rel = sorted(p.relative_to(tmp).as_posix() for p in (tmp / STATE_DIR).iterdir() if p.is_file())
    table = _digest_files(rt, tmp, rel)
    if rt.is_main:
        bad = {k: v for k, v in table.items() if "error" in v}
        if bad:
            raise CheckpointError(f"{tmp}: could not read back {next(iter(bad))} after writing it "
                                  f"({next(iter(bad.values()))['error']})")
        rng = torch_bytes({"rng": rng_state or capture_rng_state()})
        for fname, data in {**(files or {}), RNG_FILE: rng}.items():
            write_synced(tmp / fname, data)
            table[fname] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        meta = {
            "format": DCP_FORMAT,
            "format_version": FORMAT_VERSION,
            "step": step,
            "world_size": rt.world_size,
            "parallel": rt.parallel if rt.world_size > 1 else None,
            "tp": rt.tp,
            "model_config": model_config.to_dict(),
            "train_config": train_config,
            "extra": extra or {},
            "files": table,
            "torch_version": torch.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_synced(tmp / META, json.dumps(meta, indent=1).encode())
        fsync_dir(tmp / STATE_DIR)
        fsync_dir(tmp)
    if os.environ.get(PAUSE_ENV) == str(step):  # test-only (layout.PAUSE_ENV): every rank, before publish
        time.sleep(600)
    if rt.is_main:
        publish(tmp, root, name, step, keep_last)
    rt.barrier()
    return root / name


def _valid_files_and_step(meta: Dict[str, Any]) -> bool:
    """meta.json has an integer step and a {relative path: {size, sha256}} file table (not hand-damaged)."""
    files = meta.get("files")
    return isinstance(meta.get("step"), int) and not isinstance(meta.get("step"), bool) and \
        isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in files.items())


def read_sharded_meta(path: Path, model_config: Optional[ModelConfig]) -> Dict[str, Any]:
    meta_path = path / META
    meta = read_json(meta_path, missing="file not found (incomplete checkpoint)")
    if not isinstance(meta, dict) or meta.get("format") != DCP_FORMAT or \
            meta.get("format_version") != FORMAT_VERSION or not _valid_files_and_step(meta):
        raise CheckpointError(f"{meta_path}: not a qknorm sharded checkpoint (format {DCP_FORMAT} "
                              f"{FORMAT_VERSION})")
    if model_config is not None:
        check_same_config(meta.get("model_config", {}), model_config, source=str(path))
    return meta


def verify_sharded(rt: Collective, path: Path, meta: Dict[str, Any]) -> Optional[str]:
    """None if every file of `meta` is present with its size and sha256, else what is wrong (same on all ranks)."""
    expected = meta["files"]
    check_names_inside(path, [META, *expected])  # a name or symlink leading outside is refused before anything is read
    got = _digest_files(rt, path, sorted(expected))
    for rel in sorted(expected):
        info, have = expected[rel], got.get(rel, {})
        if "error" in have:
            return f"{path / rel}: unreadable ({have['error']})"
        if have.get("size") != info.get("size"):
            return f"{path / rel}: truncated or altered ({have.get('size')} bytes, expected {info.get('size')})"
        if have.get("sha256") != info.get("sha256"):
            return f"{path / rel}: checksum mismatch (corrupt file)"
    return None


def load_sharded(path: str | Path, rt: Collective, model: nn.Module, optimizer: torch.optim.Optimizer,
                 model_config: Optional[ModelConfig] = None) -> Checkpoint:
    """Load sharded checkpoint `path` into `model` / `optimizer` (collective). The returned `Checkpoint` has
    empty `model_state` / `optimizer_state`: they are already loaded."""
    path = Path(path)
    meta = read_on_every_rank(rt, lambda: read_sharded_meta(path, model_config))
    problem = verify_sharded(rt, path, meta)
    if problem:
        raise CheckpointError(problem)
    return load_verified_sharded(path, meta, rt, model, optimizer)


def load_verified_sharded(path: Path, meta: Dict[str, Any], rt: Collective, model: nn.Module,
                           optimizer: torch.optim.Optimizer) -> Checkpoint:
    """Load a verified sharded checkpoint (collective). Nothing in it is unpickled but through dcp_reader.py
    (allow-list `.metadata`, weights-only entries) and safe_pickle.load_torch (rng.pt)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    rng = read_rng(path)
    metadata = read_checked_metadata(path / STATE_DIR, root=path)
    try:
        state = _dcp_state(model, optimizer)
        load_dcp(state, path / STATE_DIR, metadata, no_dist=not _dist_active())
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except CheckpointError:
        raise
    except Exception as e:  # a layout that does not fit the model
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(f"{path}: cannot load sharded checkpoint ({e.__class__.__name__}: {first})") from None
    return Checkpoint(path=path, step=int(meta["step"]), model_state={}, optimizer_state={}, rng_state=rng,
                      train_config=meta.get("train_config", {}), extra=meta.get("extra", {}))


def read_rng(path: Path) -> Dict[str, Any]:
    """rank 0's RNG states (rng.pt, read with weights_only=True)."""
    rng = load_torch(file_inside(path, RNG_FILE).read_bytes(), source=str(path / RNG_FILE))
    if not isinstance(rng, dict) or not isinstance(rng.get("rng"), dict):
        raise CheckpointError(f"{path / RNG_FILE}: holds no RNG states")
    return rng["rng"]
