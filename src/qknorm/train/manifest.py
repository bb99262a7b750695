"""A run's record of itself: run.json in the run directory, written before the first step.

It holds everything that defines the run — the model config (and, from the CLI, the preset, size and
overrides it came from), the training config, and the data: where it came from (path, tokenizer) and a
fingerprint of the token stream (length, vocabulary, sha256) — so `qknorm train --out R --resume` alone
continues exactly, and a resume on other data is caught instead of silently changing the run. A run trained
with a tokenizer also keeps a copy of it as R/tokenizer.json (and in every checkpoint), so the model and its
tokenizer travel together.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import CheckpointError
from ..io.files import atomic_write_bytes, read_json
from ..version import __version__
from ..io.checkpoints.layout import META, list_checkpoints
from ..io.names import CKPT_DIR, RUN_RECORD
from ..data.tokens import DataFingerprint, TokenData, load_tokens

__all__ = ["DataRecord", "RunManifest", "legacy_model_config",
           "legacy_train_config"]

_FORMAT = "qknorm-run"


@dataclasses.dataclass(frozen=True)
class DataRecord:
    """Where a run's tokens came from and what they were."""

    spec: Optional[str]  # the data path as an absolute path; None = the embedded corpus
    tokenizer: Optional[str]  # the tokenizer file the text was encoded with (None = bytes)
    source: str  # the human description load_tokens gave
    fingerprint: DataFingerprint
    max_bytes: Optional[int] = None  # load_tokens' other arguments
    val_fraction: float = 0.05

    @classmethod
    def of(cls, data: TokenData) -> "DataRecord":
        return cls(spec=data.spec, tokenizer=data.tokenizer, source=data.source, fingerprint=data.fingerprint(),
                   max_bytes=data.max_bytes, val_fraction=data.val_fraction)

    def load(self, tokenizer: Optional[str] = None) -> TokenData:
        """The recorded tokens again (`tokenizer`: where the tokenizer is now, e.g. the run's copy)."""
        return load_tokens(self.spec, tokenizer=tokenizer or self.tokenizer, max_bytes=self.max_bytes,
                           val_fraction=self.val_fraction)

    def describe(self) -> str:
        where = self.spec or "the embedded corpus"
        return where + (f" with tokenizer {self.tokenizer}" if self.tokenizer else "")


@dataclasses.dataclass(frozen=True)
class RunManifest:
    model_config: Dict[str, Any]  # ModelConfig.to_dict()
    train_config: Dict[str, Any]  # TrainConfig.to_dict()
    data: DataRecord
    origin: Dict[str, Any] = dataclasses.field(default_factory=dict)  # {"preset", "size", "overrides"} (CLI)
    # how this machine ran it, where settings leave a choice: {"muon_newton_schulz": NSPrecision.to_json()}
    execution: Dict[str, Any] = dataclasses.field(default_factory=dict)
    qknorm: str = __version__
    created: str = dataclasses.field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        return {"format": _FORMAT, **out}

    @classmethod
    def from_json(cls, d: Any, *, source: str) -> "RunManifest":
        try:
            if not isinstance(d, dict) or d.get("format") != _FORMAT:
                raise ValueError("not a qknorm run record")
            data = dict(d["data"])
            data["fingerprint"] = DataFingerprint(**data["fingerprint"])
            return cls(model_config=dict(d["model_config"]), train_config=dict(d["train_config"]),
                       data=DataRecord(**data), origin=dict(d.get("origin") or {}),
                       execution=dict(d.get("execution") or {}), qknorm=str(d.get("qknorm")),
                       created=str(d.get("created")))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: not a qknorm run record ({e.__class__.__name__}: {e})") from None

    def write(self, out: Path) -> None:
        atomic_write_bytes(out / RUN_RECORD, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def read(cls, out: Path) -> Optional["RunManifest"]:
        """The record in run directory `out`, or None when there is none (a run of an older version)."""
        path = Path(out) / RUN_RECORD
        if not path.exists():
            return None
        return cls.from_json(read_json(path), source=str(path))


def _newest_meta(out: Path) -> Optional[Dict[str, Any]]:
    """meta.json of the newest checkpoint that has a readable one (runs written before run.json existed)."""
    for _, path in reversed(list_checkpoints(Path(out) / CKPT_DIR)):
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("model_config"), dict):
            return meta
    return None


def legacy_model_config(out: Path) -> Optional[Dict[str, Any]]:
    """The model config of a run without run.json, from its newest checkpoint; None if there is none."""
    meta = _newest_meta(out)
    return meta["model_config"] if meta else None


def legacy_train_config(out: Path) -> Optional[Dict[str, Any]]:
    """The training config of a run without run.json, from its newest checkpoint; None if there is none."""
    meta = _newest_meta(out)
    return meta.get("train_config") if meta else None
