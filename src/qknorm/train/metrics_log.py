"""metrics.jsonl: one strict-JSON line a training step (`StepRecord.to_json`), kept in step with the checkpoints.

Non-finite numbers are written as null (strict JSON has no NaN) and read back as NaN. A resumed run drops the
lines of steps its checkpoint does not hold (written after it, before a crash) and reads the rest back as
history (`StepRecord.from_json`; a line that is not a step record is a CheckpointError naming the file and line),
so the file of a resumed run equals the file of an uninterrupted one.

A `sink` (e.g. tensorboard_log.TensorBoardLog) gets every record written here too, and is closed with the log.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Optional

from ..errors import CheckpointError
from ..io.files import atomic_write_bytes
from .step_record import StepRecord

__all__ = ["MetricsLog"]



class MetricsLog:
    """metrics.jsonl: one strict-JSON line a step, flushed (not fsynced); on resume cut back to a step."""

    def __init__(self, path: Path, *, resume_step: Optional[int], sink: Optional[Any] = None):
        self.path = path
        self.sink = sink  # has write(record) and close()
        self.history: List[StepRecord] = []
        try:
            self._open(resume_step)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read or write the metrics log ({e.strerror or e})") from None

    def _open(self, resume_step: Optional[int]) -> None:
        path = self.path
        if resume_step is not None and path.exists():
            keep = []
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if isinstance(rec, dict) and rec.get("step", math.inf) < resume_step:
                    try:
                        self.history.append(StepRecord.from_json(rec))
                    except (TypeError, ValueError) as e:
                        raise CheckpointError(f"{path} line {n}: not a training step's record ({e})") from None
                    keep.append(line)
            atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())
        self._f = open(path, "a")

    def write(self, record: StepRecord) -> None:
        self._f.write(json.dumps(record.to_json()) + "\n")
        self._f.flush()
        if self.sink is not None:
            self.sink.write(record)

    def close(self) -> None:
        self._f.close()
        if self.sink is not None:
            self.sink.close()
