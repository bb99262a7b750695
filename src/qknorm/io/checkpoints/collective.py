"""What the checkpoint formats need from the processes that write and read them: `Collective`.

A sharded checkpoint is written and verified by every process of a run together (each hashes its share of the
files, rank 0 writes meta.json). The formats ask only for the process's rank and count and a few collectives;
the training runtime (train/runtime.py and its distributed subclasses) provides them, and `SINGLE_PROCESS`
stands for one process reading a checkpoint on its own (`qknorm inspect`, `load_model`).
"""
from __future__ import annotations

from typing import Any, List, Optional, Protocol

__all__ = ["Collective", "SINGLE_PROCESS"]


class Collective(Protocol):
    """The process group a checkpoint is written or read by (`train.runtime.Runtime` is one)."""

    rank: int
    world_size: int
    tp: int  # tensor-parallel degree, recorded in a sharded checkpoint's meta.json
    parallel: Any  # the data-parallel mode (train.config.Parallel), recorded likewise

    @property
    def is_main(self) -> bool: ...

    def barrier(self) -> None: ...

    def broadcast_object(self, obj: Any) -> Any: ...

    def all_gather_object(self, obj: Any) -> List[Any]: ...


class _SingleProcess:
    """Rank 0 of 1: every collective is the identity."""

    rank, world_size, tp = 0, 1, 1
    parallel: Optional[Any] = None
    is_main = True

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def all_gather_object(self, obj: Any) -> List[Any]:
        return [obj]


SINGLE_PROCESS: Collective = _SingleProcess()
