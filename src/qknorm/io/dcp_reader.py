"""Reading a torch.distributed.checkpoint (DCP) folder someone else wrote: nothing in it runs, nothing is
allocated that its files do not hold, nothing is read from outside it.

    dcp_dir/
      .metadata            a pickle: every entry's global shape and dtype, and where its bytes lie
      __<rank>_<i>.distcp  shard files: each stored item a torch.save blob at (offset, length)

torch's own reader unpickles `.metadata` with pickle.load and every non-tensor entry (optimizer param
groups, counters) with torch.load(weights_only=False), so either could run code. Both our sharded checkpoints
(train/checkpoints/sharded.py, model_state.py) and OLMo-core's (interop/olmo_core.py) are read here instead:

* `read_checked_metadata`: `.metadata` through the allow-list unpickler (safe_pickle.py), then `check_layout`
  before anything is allocated: every stored item names a regular file in the folder (a plain name: no
  path, no symlink leading out) and lies within that file's bytes (a shard cut short is named); no item
  carries a load transform (compression, which DCP's default writer never adds); every tensor entry's
  declared bytes (shape x dtype size) fit in the bytes stored for it, and its chunks lie inside its shape.
  So a `.metadata` declaring a 10**12-element tensor is one line, not an out-of-memory kill.
* `load_dcp`: `dcp.load` with a reader that returns that checked metadata (never unpickling `.metadata`
  again) and a planner that reads non-tensor entries with torch.load(weights_only=True); every non-tensor
  entry of the checkpoint is tried that way first, so a refused one stops the load before it begins.
  Tensors are read by torch with weights_only=True. Every failure is a CheckpointError naming the file
  (UnsafeCheckpointError, naming the class too, when something asked to run code).
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorStorageMetadata)

from ..errors import CheckpointError, UnsafeCheckpointError
from .files import dir_inside, file_inside
from .safe_pickle import classify_torch_error, first_line, load_dcp_metadata, load_torch

__all__ = ["METADATA", "read_checked_metadata", "check_layout", "load_dcp"]

METADATA = ".metadata"


def read_checked_metadata(dcp_dir: Path, *, root: Optional[Path] = None) -> Metadata:
    """The `.metadata` of `dcp_dir`, read by the allow-list unpickler and checked against the shard files
    (`check_layout`); `root`: the directory being loaded, which `dcp_dir` must lie in (default: itself)."""
    dcp_dir = Path(dcp_dir)
    dir_inside(root if root is not None else dcp_dir, dcp_dir)
    path = dcp_dir / METADATA
    metadata = load_dcp_metadata(file_inside(dcp_dir, METADATA))
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict) or \
            not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"{path}: not a torch.distributed.checkpoint metadata file")
    check_layout(dcp_dir, metadata)
    return metadata


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in x)


def _stored_items(dcp_dir: Path, metadata: Metadata) -> Dict[str, int]:
    """{fqn: bytes stored for it}, after checking that every item lies inside a regular file of the folder."""
    path = dcp_dir / METADATA
    sizes: Dict[str, int] = {}
    stored: Dict[str, int] = defaultdict(int)
    for index, info in metadata.storage_data.items():
        if not isinstance(index, MetadataIndex) or not isinstance(index.fqn, str) or \
                not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str):
            raise CheckpointError(f"{path}: storage entry {index!r} is not a (MetadataIndex, _StorageInfo) pair")
        rel = info.relative_path
        if rel != Path(rel).name or rel in ("", ".", ".."):
            raise UnsafeCheckpointError(f"{path}: {index.fqn!r} is stored in {rel!r}, which is not a file name in "
                                        f"{dcp_dir} (model state is read only from inside it)")
        if rel not in sizes:
            sizes[rel] = file_inside(dcp_dir, rel).stat().st_size
        start, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (start, length)):
            raise CheckpointError(f"{path}: {index.fqn!r} has no valid (offset, length) in {rel}")
        if start + length > sizes[rel]:
            raise CheckpointError(f"{dcp_dir / rel}: cut short: {index.fqn!r} lies at bytes {start}..{start + length} "
                                  f"but the file has {sizes[rel]} bytes")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{path}: {index.fqn!r} carries load transforms {info.transform_descriptors!r}; "
                                  "only plain torch.save items are read")
        stored[index.fqn] += length
    return stored


def check_layout(dcp_dir: Path, metadata: Metadata) -> None:
    """Refuse (CheckpointError naming the file) what would read outside a shard or allocate more than stored."""
    path = dcp_dir / METADATA
    stored = _stored_items(dcp_dir, metadata)
    for fqn, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            if fqn not in stored:
                raise CheckpointError(f"{path}: entry {fqn!r} has no stored bytes")
            continue
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{path}: entry {fqn!r} is a {type(entry).__name__}, not tensor or bytes metadata")
        size, dtype = tuple(getattr(entry, "size", ())), getattr(getattr(entry, "properties", None), "dtype", None)
        if not _is_shape(size) or not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"{path}: entry {fqn!r} has no valid shape and dtype")
        declared = math.prod(size) * dtype.itemsize
        if declared > stored.get(fqn, 0):
            raise CheckpointError(f"{path}: entry {fqn!r} declares shape {size} of {dtype} ({declared:,} bytes) but "
                                  f"the shard files hold {stored.get(fqn, 0):,} bytes for it")
        for chunk in entry.chunks if isinstance(entry.chunks, list) else [None]:
            if not isinstance(chunk, ChunkStorageMetadata) or not _is_shape(tuple(chunk.offsets)) or \
                    not _is_shape(tuple(chunk.sizes)) or len(chunk.offsets) != len(size) or \
                    len(chunk.sizes) != len(size) or \
                    any(o + n > s for o, n, s in zip(chunk.offsets, chunk.sizes, size)):
                raise CheckpointError(f"{path}: entry {fqn!r} has a chunk outside its shape {size}")


class _Reader(dcp.FileSystemReader):
    """torch's file reader, handed the checked metadata instead of unpickling `.metadata`; it remembers the
    shard file it is reading, so a failure names it."""

    def __init__(self, dcp_dir: Path, metadata: Metadata):
        super().__init__(str(dcp_dir))
        self.dir, self.metadata, self.current = Path(dcp_dir), metadata, METADATA

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.metadata

    def _slice_file(self, file, sinfo: _StorageInfo):
        self.current = sinfo.relative_path
        return super()._slice_file(file, sinfo)

    def read_data(self, plan, planner):
        try:
            return super().read_data(plan, planner)
        except CheckpointError:
            raise
        except Exception as e:  # a tensor item torch.load(weights_only=True) refused, or a torn one
            raise classify_torch_error(e, source=str(self.dir / self.current)) from None


class _Planner(DefaultLoadPlanner):
    """DCP's default load planner, but non-tensor entries are read with torch.load(weights_only=True)."""

    def __init__(self, reader: _Reader):
        super().__init__()
        self.reader = reader

    def load_bytes(self, read_item, value) -> None:
        fqn = read_item.dest_index.fqn
        obj = load_torch(value, source=f"{self.reader.dir / self.reader.current} (entry {fqn!r})")
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def _check_byte_entries(dcp_dir: Path, metadata: Metadata) -> None:
    """Every non-tensor item of the checkpoint, read with weights_only=True (and dropped): a refused one stops
    the load before torch's machinery starts, whichever entries the caller asked for."""
    byte_keys = {k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
    for index, info in metadata.storage_data.items():
        if index.fqn in byte_keys:
            with open(file_inside(dcp_dir, info.relative_path), "rb") as f:
                f.seek(info.offset)
                data = f.read(info.length)
            load_torch(data, source=f"{dcp_dir / info.relative_path} (entry {index.fqn!r})")


def _failure(e: BaseException, dcp_dir: Path) -> CheckpointError:
    """The CheckpointError to raise for what `dcp.load` raised (it wraps each rank's exception)."""
    found: Tuple[BaseException, ...] = (e,)
    if isinstance(e, CheckpointException):
        found = tuple(exc for exc, _ in e.failures.values())
    for exc in sorted(found, key=lambda x: not isinstance(x, UnsafeCheckpointError)):
        if isinstance(exc, CheckpointError):
            return exc
    first = found[0]
    return CheckpointError(f"{dcp_dir}: cannot read the checkpoint's tensors ({first.__class__.__name__}: "
                           f"{first_line(str(first))})")


def load_dcp(state: Dict[str, Any], dcp_dir: Path, metadata: Metadata, *, no_dist: bool = True) -> None:
    """`dcp.load(state, ...)` in place from `dcp_dir`, whose `metadata` came from read_checked_metadata;
    collective when `no_dist` is False (every rank calls it). CheckpointError naming the file on any failure."""
    dcp_dir = Path(dcp_dir)
    _check_byte_entries(dcp_dir, metadata)
    reader = _Reader(dcp_dir, metadata)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": intended
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
            dcp.load(state, storage_reader=reader, planner=_Planner(reader), no_dist=no_dist)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        raise _failure(e, dcp_dir) from None
