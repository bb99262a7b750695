"""Sharded checkpoints of multi-process runs (torch.distributed.checkpoint), one resume path for every format,
and the consolidated model export.

A single-process run writes the checkpoints of train/checkpoint.py (full safetensors + trainer.pt). A run
under torchrun with more than one process writes **sharded** checkpoints: every rank writes its own shard
of the model and optimizer state in parallel, nothing is gathered on one rank. Both live side by side under
the same names, so listing, `latest` and keep-last-K pruning are shared:

    checkpoints/
      step_0000020/              a sharded (DCP) checkpoint
        state/.metadata          torch.distributed.checkpoint: the global layout of every tensor
        state/__<r>_0.distcp     rank r's shards of {"model": ..., "optim": ...} (DTensor shards under FSDP;
                                 under DDP each replicated tensor is written once, by one rank)
        rng.pt                   rank 0's RNG states
        meta.json                {"format": "dcp", step, world_size, parallel, model and training config,
                                  extras, and size + sha256 of every file above}

Writing (`save_sharded`, collective): all ranks write into `.tmp-step_XXXXXXX-dcp/` (files fsynced by DCP);
after a barrier the files are hashed (rank r hashes every world_size-th file), rank 0 writes rng.pt and
meta.json, renames the directory to its final name, fsyncs, points `latest` at it and prunes; a last
barrier. A crash at any point leaves the earlier checkpoints untouched and at most a `.tmp-*` directory,
which is never a resume candidate and is removed by the next save.

TEST-ONLY hook (tests/distributed/test_kill_sharded.py): with QKNORM_TEST_PAUSE_IN_CHECKPOINT_WRITE=<step> in
the environment (train/checkpoint.py's PAUSE_ENV), every rank sleeps (up to 10 minutes) once the temporary
directory of sharded checkpoint <step> is complete (DCP shards, rng.pt, meta.json, all fsynced) but before
rank 0 renames it into place, so a test can SIGKILL the whole job there. Never set it outside tests.

Reading (`load_training_checkpoint`, collective): newest first; a sharded checkpoint is loaded with DCP,
which reshards, so a run saved by N processes resumes under any M (M = 1 included, without a process
group); a full one (train/checkpoint.py) is read by every rank and sharded on load. A damaged candidate
(missing meta.json, a size or checksum mismatch, a file that does not parse) is agreed on by all ranks,
reported with a warning, moved aside by rank 0 (`step_XXXXXXX.corrupt`) and the next older one is tried. A
checkpoint of a different model config raises `CheckpointMismatch` at once.

`export_model` writes the final consolidated `model.safetensors` + `config.json` on rank 0
(qknorm.checkpoint_io.save_model) from the full state gathered with
`StateDictOptions(full_state_dict=True, cpu_offload=True)` — loadable by `qknorm.load_model`, exportable
with `qknorm.to_hf`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..checkpoint_io import _fsync_dir, read_json, save_model
from ..config import ModelConfig
from ..errors import CheckpointError
from ..model import TransformerLM
from .checkpoint import (META, Checkpoint, CheckpointMismatch, _torch_bytes, _write_synced, capture_rng_state,
                         PAUSE_ENV, check_same_config, checkpoint_name, list_checkpoints, load_checkpoint,
                         publish, save_checkpoint)
from .runtime import Runtime

__all__ = ["DCP_FORMAT", "save_sharded", "load_sharded", "is_sharded", "save_training_checkpoint",
           "load_training_checkpoint", "export_model", "full_model"]

DCP_FORMAT = "dcp"
FORMAT_VERSION = 1
STATE_DIR, RNG_FILE = "state", "rng.pt"


# ---------------------------------------------------------------------------------------------- helpers


def _dist_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _broadcast(rt: Runtime, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (identity in a single process)."""
    return rt.broadcast_object(obj) if rt.world_size > 1 else obj


def _all_gather(rt: Runtime, obj: Any) -> List[Any]:
    return rt.all_gather_object(obj) if rt.world_size > 1 else [obj]


def _file_digest(path: Path) -> Dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def _digest_files(rt: Runtime, root: Path, rel_paths: List[str]) -> Dict[str, Dict[str, Any]]:
    """{rel: {size, sha256}} for `rel_paths` under `root`, rank r hashing every world_size-th file.

    A file that cannot be read gets {"error": "..."}; every rank returns the same merged dict.
    """
    mine: Dict[str, Dict[str, Any]] = {}
    for rel in rel_paths[rt.rank::rt.world_size]:
        try:
            mine[rel] = _file_digest(root / rel)
        except OSError as e:
            mine[rel] = {"error": e.strerror or str(e)}
    merged: Dict[str, Dict[str, Any]] = {}
    for part in _all_gather(rt, mine):
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


# ---------------------------------------------------------------------------------------------- saving


def save_sharded(root: str | Path, step: int, rt: Runtime, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 model_config: ModelConfig, train_config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None,
                 rng_state: Optional[Dict[str, Any]] = None, keep_last: int = 3) -> Path:
    """Write sharded checkpoint `step` under `root` (collective: every rank calls it); returns its path."""
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    name = checkpoint_name(step)
    tmp = root / f".tmp-{name}-dcp"
    if rt.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    rt.barrier()
    state = _dcp_state(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process.*")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp / STATE_DIR), sync_files=True),
                 no_dist=not _dist_active())
    rt.barrier()
    rel = sorted(p.relative_to(tmp).as_posix() for p in (tmp / STATE_DIR).iterdir() if p.is_file())
    files = _digest_files(rt, tmp, rel)
    if rt.is_main:
        bad = {k: v for k, v in files.items() if "error" in v}
        if bad:
            raise CheckpointError(f"{tmp}: could not read back {next(iter(bad))} after writing it "
                                  f"({next(iter(bad.values()))['error']})")
        rng = _torch_bytes({"rng": rng_state or capture_rng_state()})
        _write_synced(tmp / RNG_FILE, rng)
        files[RNG_FILE] = {"size": len(rng), "sha256": hashlib.sha256(rng).hexdigest()}
        meta = {
            "format": DCP_FORMAT,
            "format_version": FORMAT_VERSION,
            "step": step,
            "world_size": rt.world_size,
            "parallel": rt.parallel if rt.world_size > 1 else None,
            "model_config": model_config.to_dict(),
            "train_config": train_config,
            "extra": extra or {},
            "files": files,
            "torch_version": torch.__version__,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_synced(tmp / META, json.dumps(meta, indent=1).encode())
        _fsync_dir(tmp / STATE_DIR)
        _fsync_dir(tmp)
    if os.environ.get(PAUSE_ENV) == str(step):  # test-only, see the module docstring: every rank, before publish
        time.sleep(600)
    if rt.is_main:
        publish(tmp, root, name, step, keep_last)
    rt.barrier()
    return root / name


def save_training_checkpoint(rt: Runtime, root: str | Path, step: int, model: nn.Module,
                             optimizer: torch.optim.Optimizer, *, model_config: ModelConfig,
                             train_config: Dict[str, Any], extra: Optional[Dict[str, Any]] = None,
                             rng_state: Optional[Dict[str, Any]] = None, keep_last: int = 3) -> Path:
    """The loop's checkpoint: sharded with more than one process, the full single-file format otherwise."""
    if rt.world_size > 1:
        return save_sharded(root, step, rt, model, optimizer, model_config=model_config, train_config=train_config,
                            extra=extra, rng_state=rng_state, keep_last=keep_last)
    model_state = rt.model_state_dict(model)
    optim_state = rt.optimizer_state_dict(model, optimizer)
    path = save_checkpoint(root, step, model_state=model_state, optimizer_state=optim_state,
                           model_config=model_config, train_config=train_config, extra=extra,
                           rng_state=rng_state, keep_last=keep_last)
    rt.barrier()
    return path


# ---------------------------------------------------------------------------------------------- loading


def _valid_files_and_step(meta: Dict[str, Any]) -> bool:
    """meta.json has an integer step and a {relative path: {size, sha256}} file table (not hand-damaged)."""
    files = meta.get("files")
    return isinstance(meta.get("step"), int) and not isinstance(meta.get("step"), bool) and \
        isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, dict) for k, v in files.items())


def _read_sharded_meta(path: Path, model_config: Optional[ModelConfig]) -> Dict[str, Any]:
    meta_path = path / META
    meta = read_json(meta_path, missing="file not found (incomplete checkpoint)")
    if not isinstance(meta, dict) or meta.get("format") != DCP_FORMAT or \
            meta.get("format_version") != FORMAT_VERSION or not _valid_files_and_step(meta):
        raise CheckpointError(f"{meta_path}: not a qknorm sharded checkpoint (format {DCP_FORMAT} "
                              f"{FORMAT_VERSION})")
    if model_config is not None:
        check_same_config(meta.get("model_config", {}), model_config, source=str(path))
    return meta


def _verify_sharded(rt: Runtime, path: Path, meta: Dict[str, Any]) -> Optional[str]:
    """None if every file of `meta` is present with its size and sha256, else what is wrong (same on all ranks)."""
    expected = meta["files"]
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


def load_sharded(path: str | Path, rt: Runtime, model: nn.Module, optimizer: torch.optim.Optimizer,
                 model_config: Optional[ModelConfig] = None) -> Checkpoint:
    """Load sharded checkpoint `path` into `model` / `optimizer` (collective). The returned `Checkpoint` has
    empty `model_state` / `optimizer_state`: they are already loaded."""
    path = Path(path)
    meta, err = None, None
    try:
        meta = _read_sharded_meta(path, model_config)
    except CheckpointMismatch:
        raise
    except CheckpointError as e:
        err = str(e)
    errors = [e for e in _all_gather(rt, err) if e]
    if errors:
        raise CheckpointError(errors[0])
    problem = _verify_sharded(rt, path, meta)
    if problem:
        raise CheckpointError(problem)
    return _load_verified_sharded(path, meta, rt, model, optimizer)


def _load_verified_sharded(path: Path, meta: Dict[str, Any], rt: Runtime, model: nn.Module,
                           optimizer: torch.optim.Optimizer) -> Checkpoint:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    try:
        rng = torch.load(path / RNG_FILE, weights_only=True, map_location="cpu")["rng"]
        state = _dcp_state(model, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
            dcp.load(state, storage_reader=dcp.FileSystemReader(str(path / STATE_DIR)), no_dist=not _dist_active())
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except Exception as e:  # a file that passed its checksum but does not parse, or a layout that does not fit
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise CheckpointError(f"{path}: cannot load sharded checkpoint ({e.__class__.__name__}: {first})") from None
    return Checkpoint(path=path, step=int(meta["step"]), model_state={}, optimizer_state={}, rng_state=rng,
                      train_config=meta.get("train_config", {}), extra=meta.get("extra", {}))


def _try_load(rt: Runtime, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
              model_config: ModelConfig) -> Checkpoint:
    """Verify (every rank agrees) then load one checkpoint of either format; CheckpointError if damaged."""
    sharded = is_sharded(path)
    full, meta, err = None, None, None
    try:
        if sharded:
            meta = _read_sharded_meta(path, model_config)
        else:
            full = load_checkpoint(path, model_config)  # reads and verifies size + sha256 of every file
    except CheckpointMismatch:
        raise
    except CheckpointError as e:
        err = str(e)
    errors = [e for e in _all_gather(rt, err) if e]
    if errors:
        raise CheckpointError(errors[0])
    if sharded:
        problem = _verify_sharded(rt, path, meta)
        if problem:
            raise CheckpointError(problem)
        return _load_verified_sharded(path, meta, rt, model, optimizer)
    rt.load_model_state_dict(model, full.model_state)
    rt.load_optimizer_state_dict(model, optimizer, full.optimizer_state)
    return full


def load_training_checkpoint(rt: Runtime, root: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             model_config: ModelConfig) -> Checkpoint:
    """Load the newest usable checkpoint under `root` (either format) into `model` / `optimizer`; collective.

    Falls back past damaged checkpoints (a warning each, moved aside as `*.corrupt` by rank 0); a different
    model config raises `CheckpointMismatch`; nothing usable: `CheckpointError`.
    """
    root = Path(root)
    found = _broadcast(rt, [(s, str(p)) for s, p in list_checkpoints(root)] if rt.is_main else None)
    if not found:
        raise CheckpointError(f"{root}: no checkpoint to resume from")
    damaged = []  # (path, problem), newest first: reported and moved aside only once a usable one loads
    for _, p in reversed(found):
        path = Path(p)
        try:
            ckpt = _try_load(rt, path, model, optimizer, model_config)
        except CheckpointMismatch:
            raise
        except CheckpointError as e:
            damaged.append((path, str(e)))
            continue
        for bad, problem in damaged:
            moved = ""
            if rt.is_main:
                aside = bad.with_name(f"{bad.name}.corrupt")
                try:
                    if aside.exists():
                        shutil.rmtree(aside, ignore_errors=True)
                    os.replace(bad, aside)
                    moved = f"; moved to {aside.name}"
                except OSError:
                    pass
                warnings.warn(f"skipping damaged checkpoint {bad.name}: {problem}{moved}", RuntimeWarning,
                              stacklevel=2)
            rt.barrier()
        return ckpt
    # nothing usable: one error, and the run directory is left exactly as it was (nothing moved aside)
    problems = [problem for _, problem in damaged]
    raise CheckpointError(f"{root}: no usable checkpoint ({len(problems)} damaged; newest: {problems[0]})")


# ---------------------------------------------------------------------------------------------- export


def full_model(rt: Runtime, model: nn.Module) -> Optional[TransformerLM]:
    """A plain CPU `TransformerLM` with the full weights of (wrapped) `model` on rank 0, None on the other ranks.

    Collective with more than one process (the state is gathered to rank 0); in a single process: the model.
    """
    inner = rt.unwrap(model)
    if rt.world_size == 1:
        return inner
    state = rt.model_state_dict(model)  # full_state_dict=True, cpu_offload=True: rank 0 only
    if not rt.is_main:
        return None
    plain = TransformerLM(inner.config, device="meta")
    plain.load_state_dict(state, strict=True, assign=True)
    return plain


def export_model(rt: Runtime, model: nn.Module, out_dir: str | Path) -> Optional[Path]:
    """Write the consolidated `model.safetensors` + `config.json` to `out_dir` on rank 0 (collective)."""
    plain = full_model(rt, model)
    written = save_model(plain, out_dir) if plain is not None else None
    write_digests = getattr(rt, "write_digests", None)
    if write_digests is not None:
        write_digests(model)
    rt.barrier()
    return written
