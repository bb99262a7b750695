"""The only ways qknorm reads a pickle: an allow-list unpickler for torch.distributed.checkpoint's `.metadata`,
and `torch.load(..., weights_only=True)` for everything torch.save wrote.

A pickle can name any importable callable and have the reader call it, so a checkpoint from someone else could
run code the moment it is opened. qknorm never calls `pickle.load` or `torch.load(weights_only=False)` on a
file (tests/test_safe_pickle_calls.py lists every call in src/ and holds this):

* `load_dcp_metadata(path)`: `.metadata` (DCP's global index: the shape and dtype of every entry and where its
  bytes lie) is rebuilt by `MetadataUnpickler`, which builds only torch's checkpoint metadata classes (and
  OLMo-core's `_StorageInfo`, read as torch's: same fields), torch.Size, dtypes and layouts, OrderedDict and
  the path DCP records as the checkpoint id. Anything else is refused before it is looked up, so nothing is
  imported or called.
* `load_torch(data, source)`: torch.load with weights_only=True (tensors, containers, numbers, strings): what
  our trainer.pt, rng.pt and every non-tensor entry of a DCP shard hold.

A refusal is an `UnsafeCheckpointError` naming the file and the class it asked for (one line on the CLI,
exit status 2). Reading a file that is merely corrupt raises a plain `CheckpointError`.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import CheckpointError, UnsafeCheckpointError

__all__ = ["MetadataUnpickler", "load_dcp_metadata", "load_torch", "classify_torch_error", "first_line",
           "ALLOWED_METADATA_CLASSES"]

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
ALLOWED_METADATA_CLASSES = frozenset({
    (_DCP_METADATA, n) for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                                 "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # StorageMeta.checkpoint_id: the path it was saved to
})
_STORAGE_INFO = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
                 ("olmo_core.distributed.checkpoint.filesystem", "_StorageInfo")}


class MetadataUnpickler(pickle.Unpickler):
    """Rebuilds a DCP `.metadata` pickle from the allow-list only; `source` names the file in a refusal."""

    def __init__(self, file, *, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _STORAGE_INFO:
            from torch.distributed.checkpoint.filesystem import _StorageInfo

            return _StorageInfo
        if (module, name) in ALLOWED_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):  # vars: no lazy submodule import
            return vars(torch)[name]
        raise UnsafeCheckpointError(f"{self.source}: refusing to load {module}.{name}: a checkpoint's .metadata may "
                                    "only build torch.distributed.checkpoint metadata (nothing was run)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.source}: refusing a persistent id in a .metadata pickle")


def load_dcp_metadata(path: Union[str, Path]) -> Any:
    """The object a DCP `.metadata` file holds, rebuilt by MetadataUnpickler (its type is checked by the caller)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return MetadataUnpickler(f, source=str(path)).load()
    except UnsafeCheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found (not a torch.distributed.checkpoint folder)") from None
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError, KeyError,
            IndexError, RecursionError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint metadata file ({e.__class__.__name__}: {e})") \
            from None


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_torch(data: Union[bytes, io.BytesIO, Path], *, source: str) -> Any:
    """`torch.load(data, weights_only=True, map_location="cpu")`; a pickle asking for a class outside torch's
    weights-only set is UnsafeCheckpointError naming `source` and the class, any other failure CheckpointError."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return torch.load(stream, weights_only=True, map_location="cpu")
    except Exception as e:
        raise classify_torch_error(e, source=source) from None


def classify_torch_error(e: BaseException, *, source: str) -> CheckpointError:
    """What a failed `torch.load(weights_only=True)` of `source` means: UnsafeCheckpointError naming the class
    the file asked for, or CheckpointError (a torn or foreign file)."""
    text = str(e)
    found = _GLOBAL.search(text) if isinstance(e, pickle.UnpicklingError) else None
    if found is not None:
        return UnsafeCheckpointError(f"{source}: refusing to load {found.group(1)}: only tensors and plain values "
                                     "are read from torch files (weights_only=True; nothing was run)")
    if isinstance(e, pickle.UnpicklingError):
        return CheckpointError(f"{source}: not a readable torch file ({_reason(text)})")
    return CheckpointError(f"{source}: not a readable torch file ({e.__class__.__name__}: {first_line(text)})")


def _reason(text: str) -> str:
    """The line of torch's weights-only message that says what failed (e.g. 'Unsupported operand 103')."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Please file", "Check the doc"))]
    return (useful or lines or ["unreadable"])[0][:300]


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""
