"""The single-process checkpoint format: the full model and optimizer state in one directory.

    step_0000020/
      model.safetensors      model weights (full, unsharded, CPU)
      trainer.pt             optimizer state and RNG states (torch.save; read with weights_only=True)
      tokenizer.json         the run's tokenizer, when it has one
      meta.json              step, model config, training config, extras, and size + sha256 of each file

`save_checkpoint` writes into a temp directory, fsyncs every file, then `layout.publish`es it. `load_checkpoint`
verifies sizes and checksums before parsing anything. `load_latest` tries complete checkpoints newest first;
a damaged one (missing or unreadable meta.json, a size or checksum mismatch, a file that does not parse) is
reported with a warning, moved aside (`step_XXXXXXX.corrupt`) and the next older one is tried. A checkpoint
saved from a different model config raises `CheckpointMismatch` naming the field; one whose trainer.pt asks to
build a class outside torch's weights-only set, or whose file table or symlinks lead outside it, raises
`UnsafeCheckpointError` (never skipped: nothing is loaded, nothing moved).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ...config import ModelConfig
from ...errors import CheckpointError, UnsafeCheckpointError
from ..files import fsync_dir, read_json, write_synced
from ..names import WEIGHTS_NAME
from ..safe_pickle import first_line, load_torch
from .layout import (META, PAUSE_ENV, Checkpoint, CheckpointMismatch, check_names_inside, check_same_config,
                     checkpoint_name, list_checkpoints, move_aside, publish, remove_stale_temps, sha256, torch_bytes)
from .rng import capture_rng_state

__all__ = ["MODEL", "TRAINER", "FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "load_latest"]

MODEL, TRAINER = WEIGHTS_NAME, "trainer.pt"
FORMAT_VERSION = 1


def save_checkpoint(root: str | Path, step: int, *, model_state: Dict[str, torch.Tensor],
                    optimizer_state: Dict[str, Any], model_config: ModelConfig, train_config: Dict[str, Any],
                    extra: Optional[Dict[str, Any]] = None, rng_state: Optional[Dict[str, Any]] = None,
                    keep_last: int = 3, files: Optional[Dict[str, bytes]] = None) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, keep the newest `keep_last`.
    `files`: more files to store in it as they are (e.g. the run's tokenizer.json), checksummed like the rest."""
    from safetensors.torch import save as st_save

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    name = checkpoint_name(step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    blobs = {
        MODEL: st_save({k: v.detach().to("cpu").contiguous() for k, v in model_state.items()},
                       metadata={"format": "pt"}),
        TRAINER: torch_bytes({"optimizer": optimizer_state, "rng": rng_state or capture_rng_state()}),
        **(files or {}),
    }
    for fname, data in blobs.items():
        write_synced(tmp / fname, data)
        if fname == MODEL and os.environ.get(PAUSE_ENV) == str(step):  # test-only, see layout.PAUSE_ENV
            time.sleep(600)
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "model_config": model_config.to_dict(),
        "train_config": train_config,
        "extra": extra or {},
        "files": {fname: {"size": len(data), "sha256": sha256(data)} for fname, data in blobs.items()},
        "torch_version": torch.__version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_synced(tmp / META, json.dumps(meta, indent=1).encode())
    fsync_dir(tmp)
    return publish(tmp, root, name, step, keep_last)


def load_checkpoint(path: str | Path, model_config: Optional[ModelConfig] = None) -> Checkpoint:
    """Load and verify one checkpoint directory; `model_config` given: it must be the saved one."""
    from safetensors.torch import load as st_load

    path = Path(path)
    meta_path = path / META
    meta = read_json(meta_path, missing="file not found (incomplete checkpoint)")
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or not isinstance(files, dict) \
            or not all(isinstance(v, dict) for v in files.values()) or \
            not isinstance(meta.get("step"), int) or isinstance(meta.get("step"), bool):
        raise CheckpointError(f"{meta_path}: not a qknorm training checkpoint (format {FORMAT_VERSION})")
    if model_config is not None:
        check_same_config(meta.get("model_config", {}), model_config, source=str(path))
    check_names_inside(path, [META, *meta["files"]])  # nothing is read through a name leading outside
    blobs = {}
    for fname, info in meta["files"].items():
        fpath = path / fname
        try:
            data = fpath.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{fpath}: unreadable ({e.strerror or e})") from None
        if len(data) != info.get("size"):
            raise CheckpointError(f"{fpath}: truncated or altered ({len(data)} bytes, expected {info.get('size')})")
        if sha256(data) != info.get("sha256"):
            raise CheckpointError(f"{fpath}: checksum mismatch (corrupt file)")
        blobs[fname] = data
    missing = [f for f in (MODEL, TRAINER) if f not in blobs]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing[0]}")
    trainer = load_torch(blobs[TRAINER], source=str(path / TRAINER))  # weights_only: a class it asks for is refused
    if not isinstance(trainer, dict) or not {"optimizer", "rng"} <= set(trainer):
        raise CheckpointError(f"{path / TRAINER}: holds no optimizer and RNG states")
    try:
        model_state = st_load(blobs[MODEL])
    except Exception as e:  # any parse failure of a file that passed its checksum
        raise CheckpointError(f"{path / MODEL}: cannot parse ({e.__class__.__name__}: {first_line(str(e))})") \
            from None
    return Checkpoint(path=path, step=int(meta["step"]), model_state=model_state,
                      optimizer_state=trainer["optimizer"], rng_state=trainer["rng"],
                      train_config=meta.get("train_config", {}), extra=meta.get("extra", {}))


def load_latest(root: str | Path, model_config: Optional[ModelConfig] = None) -> Checkpoint:
    """The newest usable full checkpoint under `root`, falling back past damaged ones with a warning.

    A config mismatch is not damage: it raises at once. No checkpoint at all, or none usable: CheckpointError.
    """
    root = Path(root)
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(f"{root}: no checkpoint to resume from")
    problems = []
    for step, path in reversed(found):
        try:
            return load_checkpoint(path, model_config)
        except (CheckpointMismatch, UnsafeCheckpointError):  # not damage: never a reason to fall back
            raise
        except CheckpointError as e:
            problems.append(str(e))
            moved = move_aside(path)
            warnings.warn(f"skipping damaged checkpoint {path.name}: {e}{moved}", RuntimeWarning, stacklevel=2)
    raise CheckpointError(f"{root}: no usable checkpoint ({len(problems)} damaged; newest: {problems[0]})")
