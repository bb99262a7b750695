"""Training checkpoints: atomic, verified, keep-last-K, with a fallback past a damaged newest one.

Layout under a run's output directory:

    checkpoints/
      step_0000020/            one complete checkpoint (the number = optimizer steps done = next step index)
        model.safetensors      model weights (full, unsharded, CPU)
        trainer.pt             optimizer state and RNG states (torch.save; loaded with weights_only=True)
        meta.json              step, model config, training config, extras, and size + sha256 of each file
      step_0000030/
      latest                   "step_0000030": the newest checkpoint written (informational)

Writing (`save_checkpoint`) goes into `.tmp-step_XXXXXXX/`, fsyncs every file and the directory, then
renames the directory to its final name and fsyncs the parent, then rewrites `latest` atomically and
prunes the oldest checkpoints beyond `keep_last`. A crash at any point leaves either the previous set of
checkpoints or the new one complete: a half-written temp directory is never a candidate and is removed by
the next save.

Reading (`load_latest`) tries complete checkpoints newest first; one whose meta.json is missing or
unreadable, whose file sizes or checksums do not match, or whose files do not parse is reported with a
warning, moved aside (`step_XXXXXXX.corrupt`) so that pruning never counts it, and the next older one is
tried. A checkpoint saved from a different model config raises `CheckpointError` naming the field.

`MetricsLog` keeps metrics.jsonl in step with the checkpoints: a resumed run drops the lines of steps the
checkpoint does not hold (written after it, before a crash) and reads the rest back as history.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..checkpoint_io import _fsync_dir, atomic_write_bytes, read_json
from ..config import ModelConfig
from ..diagnostics import none_to_nan, nonfinite_to_none
from ..errors import CheckpointError

__all__ = ["CKPT_DIR", "Checkpoint", "CheckpointMismatch", "save_checkpoint", "list_checkpoints", "load_checkpoint",
           "load_latest", "check_same_config", "MetricsLog", "capture_rng_state", "restore_rng_state",
           "checkpoint_name"]

CKPT_DIR = "checkpoints"
LATEST = "latest"
META, MODEL, TRAINER = "meta.json", "model.safetensors", "trainer.pt"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step_(\d{7,})$")
# TEST-ONLY hook (tests/train/test_kill.py): with QKNORM_TEST_PAUSE_IN_CHECKPOINT_WRITE=<step> in the environment,
# the writer of checkpoint <step> sleeps (up to 10 minutes) after the first file of its temporary directory is
# written, so a test can SIGKILL the process mid-write. Never set it outside tests.
PAUSE_ENV = "QKNORM_TEST_PAUSE_IN_CHECKPOINT_WRITE"


class CheckpointMismatch(CheckpointError):
    """The checkpoint is intact but was saved from a different model config (never a reason to fall back)."""


@dataclasses.dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    step: int  # optimizer steps done; training resumes at this 0-based step index
    model_state: Dict[str, torch.Tensor]
    optimizer_state: Dict[str, Any]
    rng_state: Dict[str, Any]
    train_config: Dict[str, Any]
    extra: Dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


# ---------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> Dict[str, Any]:
    """torch CPU (and CUDA), numpy and python RNG states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- writing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(root: str | Path, step: int, *, model_state: Dict[str, torch.Tensor],
                    optimizer_state: Dict[str, Any], model_config: ModelConfig, train_config: Dict[str, Any],
                    extra: Optional[Dict[str, Any]] = None, rng_state: Optional[Dict[str, Any]] = None,
                    keep_last: int = 3) -> Path:
    """Write checkpoint `step` under `root` atomically, point `latest` at it, keep the newest `keep_last`."""
    from safetensors.torch import save as st_save

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    name = checkpoint_name(step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    blobs = {
        MODEL: st_save({k: v.detach().to("cpu").contiguous() for k, v in model_state.items()},
                       metadata={"format": "pt"}),
        TRAINER: _torch_bytes({"optimizer": optimizer_state, "rng": rng_state or capture_rng_state()}),
    }
    for fname, data in blobs.items():
        _write_synced(tmp / fname, data)
        if fname == MODEL and os.environ.get(PAUSE_ENV) == str(step):  # test-only, see PAUSE_ENV
            time.sleep(600)
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "model_config": model_config.to_dict(),
        "train_config": train_config,
        "extra": extra or {},
        "files": {fname: {"size": len(data), "sha256": _sha256(data)} for fname, data in blobs.items()},
        "torch_version": torch.__version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_synced(tmp / META, json.dumps(meta, indent=1).encode())
    _fsync_dir(tmp)
    return publish(tmp, root, name, step, keep_last)


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
    _fsync_dir(root)
    atomic_write_bytes(root / LATEST, (name + "\n").encode())
    _prune(root, step, keep_last)
    return final


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _prune(root: Path, newest: int, keep_last: int) -> None:
    older = [(s, p) for s, p in list_checkpoints(root) if s <= newest]
    for _, path in older[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- reading


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
    blobs = {}
    for fname, info in meta["files"].items():
        fpath = path / fname
        try:
            data = fpath.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{fpath}: unreadable ({e.strerror or e})") from None
        if len(data) != info.get("size"):
            raise CheckpointError(f"{fpath}: truncated or altered ({len(data)} bytes, expected {info.get('size')})")
        if _sha256(data) != info.get("sha256"):
            raise CheckpointError(f"{fpath}: checksum mismatch (corrupt file)")
        blobs[fname] = data
    try:
        model_state = st_load(blobs[MODEL])
        trainer = torch.load(io.BytesIO(blobs[TRAINER]), weights_only=True, map_location="cpu")
    except KeyError as e:
        raise CheckpointError(f"{path}: checkpoint lacks {e.args[0]}") from None
    except Exception as e:  # any parse failure of a file that passed its checksum
        raise CheckpointError(f"{path}: cannot parse checkpoint files ({e.__class__.__name__}: {e})") from None
    return Checkpoint(path=path, step=int(meta["step"]), model_state=model_state,
                      optimizer_state=trainer["optimizer"], rng_state=trainer["rng"],
                      train_config=meta.get("train_config", {}), extra=meta.get("extra", {}))


def check_same_config(saved: Dict[str, Any], model_config: ModelConfig, *, source: str) -> None:
    """Raise CheckpointError naming the first field where `saved` differs from `model_config`."""
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


def load_latest(root: str | Path, model_config: Optional[ModelConfig] = None) -> Checkpoint:
    """The newest usable checkpoint under `root`, falling back past damaged ones with a warning.

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
        except CheckpointMismatch:
            raise
        except CheckpointError as e:
            problems.append(str(e))
            aside = path.with_name(f"{path.name}.corrupt")
            try:
                if aside.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                os.replace(path, aside)
                moved = f"; moved to {aside.name}"
            except OSError:
                moved = ""
            warnings.warn(f"skipping damaged checkpoint {path.name}: {e}{moved}", RuntimeWarning, stacklevel=2)
    raise CheckpointError(f"{root}: no usable checkpoint ({len(problems)} damaged; newest: {problems[0]})")


# ---------------------------------------------------------------------------------------------- metrics.jsonl


class MetricsLog:
    """metrics.jsonl: one strict-JSON line a step, flushed (not fsynced); on resume cut back to a step."""

    def __init__(self, path: Path, *, resume_step: Optional[int]):
        self.path = path
        self.history: List[Dict[str, Any]] = []
        try:
            self._open(resume_step)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read or write the metrics log ({e.strerror or e})") from None

    def _open(self, resume_step: Optional[int]) -> None:
        path = self.path
        if resume_step is not None and path.exists():
            keep = []
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if isinstance(rec, dict) and rec.get("step", math.inf) < resume_step:
                    keep.append(line)
                    self.history.append(none_to_nan(rec))
            atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())
        self._f = open(path, "a")

    def write(self, record: Dict[str, Any]) -> None:
        self._f.write(json.dumps(nonfinite_to_none(record)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
