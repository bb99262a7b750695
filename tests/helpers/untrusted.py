"""Malicious checkpoint files, made the way an attacker would: a pickle whose `__reduce__` creates a marker
file and then hands back the real value, so a reader that runs it still loads normally (nothing looks wrong),
and the checkpoint's size + sha256 table rewritten to match.

    ThenReal(marker, value)          pickles to `operator.getitem((open(marker, "w"), value), 1)`
    poison_metadata(dcp_dir, m)      DCP `.metadata` -> the real Metadata, after creating m
    poison_byte_entry(dcp_dir, m)    a non-tensor entry of a shard (an optimizer param-group value)
    poison_torch_file(path, m)       a torch.save file (rng.pt, trainer.pt, OLMo-core's train/rank0.pt)
    reseal(ckpt_dir)                 meta.json's file table rewritten to the altered files' size and sha256

`live(...)` checks a payload really runs under the unsafe readers (pickle.load, torch.load(weights_only=False)),
so a test that finds no marker after a qknorm command has shown something.
"""
from __future__ import annotations

import hashlib
import io
import json
import operator
import pickle
from pathlib import Path
from typing import Any, Tuple

import torch


class _Touch:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class ThenReal:
    """Unpickles to `value`, creating `marker` on the way."""

    def __init__(self, marker: Path, value: Any):
        self.marker, self.value = str(marker), value

    def __reduce__(self):
        return (operator.getitem, ((_Touch(self.marker), self.value), 1))


def _plain_metadata(dcp_dir: Path):
    """The real Metadata (read with the allow-list reader, so the test never runs a pickle itself)."""
    from qknorm.io.safe_pickle import load_dcp_metadata

    return load_dcp_metadata(Path(dcp_dir) / ".metadata")


def poison_metadata(dcp_dir: Path, marker: Path) -> None:
    md = _plain_metadata(dcp_dir)
    (Path(dcp_dir) / ".metadata").write_bytes(pickle.dumps(ThenReal(marker, md)))


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def poison_byte_entry(dcp_dir: Path, marker: Path, fqn: str = "") -> Tuple[str, bytes]:
    """Append a poisoned copy of a non-tensor entry (the first param group's lr, or `fqn`) to its shard file and
    point `.metadata` at it; returns the entry's name and the blob appended."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    dcp_dir = Path(dcp_dir)
    md = _plain_metadata(dcp_dir)
    names = [k for k, v in md.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
    fqn = fqn or next(k for k in names if k.endswith(".lr"))
    index = next(i for i in md.storage_data if i.fqn == fqn)
    info = md.storage_data[index]
    shard = dcp_dir / info.relative_path
    with open(shard, "rb") as f:
        f.seek(info.offset)
        value = torch.load(io.BytesIO(f.read(info.length)), weights_only=True)
    blob = _torch_bytes(ThenReal(marker, value))
    start = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(blob)
    md.storage_data[index] = _StorageInfo(info.relative_path, start, len(blob), info.transform_descriptors)
    (dcp_dir / ".metadata").write_bytes(pickle.dumps(md))
    return fqn, blob


def poison_torch_file(path: Path, marker: Path) -> None:
    value = torch.load(path, weights_only=True)
    Path(path).write_bytes(_torch_bytes(ThenReal(marker, value)))


def reseal(ckpt_dir: Path) -> None:
    """Rewrite meta.json's {file: size, sha256} table to match the files as they are now."""
    meta_path = Path(ckpt_dir) / "meta.json"
    meta = json.loads(meta_path.read_text())
    for rel in meta["files"]:
        data = (Path(ckpt_dir) / rel).read_bytes()
        meta["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta_path.write_text(json.dumps(meta, indent=1))


def live_in_plain_pickle(data: bytes) -> Any:
    """What `pickle.loads` (torch's own .metadata reader) makes of `data`: runs the payload."""
    return pickle.loads(data)  # noqa: S301 - the point: show the payload is live


def live_in_torch_load(data: bytes) -> Any:
    """What torch.load(weights_only=False) (DCP's DefaultLoadPlanner for byte entries) makes of `data`."""
    return torch.load(io.BytesIO(data), weights_only=False)
