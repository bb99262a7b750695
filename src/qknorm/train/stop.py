"""Why a training run stopped before its last step: `StopReason`, a record whose `kind` decides and whose
`message` only tells.

    NON_FINITE  a non-finite loss or gradient norm with on_nan=stop (the update was not applied)
    SIGNAL      SIGINT/SIGTERM (`signal` says which): the step finished and a checkpoint was written
    CALLBACK    the `train(callback=...)` function asked to stop (a study's time budget, a user's own rule)

Callers branch on `kind` and `signal` (the CLI's exit status, a study's run status), never on the message:
rewording a message changes no behaviour (tests/test_structure.py checks that nothing outside this module
tests the text).
"""
from __future__ import annotations

import enum
import math
import signal as _signal
from dataclasses import dataclass
from typing import Optional

__all__ = ["StopKind", "StopReason"]


class StopKind(str, enum.Enum):
    NON_FINITE = "non_finite"
    SIGNAL = "signal"
    CALLBACK = "callback"


@dataclass(frozen=True)
class StopReason:
    """Why a run stopped early (module docstring); `str()` is the message for people."""

    kind: StopKind
    message: str
    signal: Optional[_signal.Signals] = None  # with kind SIGNAL

    def __str__(self) -> str:
        return self.message

    @classmethod
    def by_signal(cls, signame: str) -> "StopReason":
        """Stopped by the signal named `signame` (e.g. "SIGTERM")."""
        return cls(StopKind.SIGNAL, f"stopped by {signame}", _signal.Signals[signame])

    @classmethod
    def by_callback(cls) -> "StopReason":
        return cls(StopKind.CALLBACK, "stopped by the callback")

    @classmethod
    def non_finite(cls, step: int, loss: float, grad_norm: float) -> "StopReason":
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        return cls(StopKind.NON_FINITE, f"non-finite {what} at step {step} (loss={loss}, grad_norm={grad_norm}); "
                                        "the update was not applied")

    @property
    def exit_code(self) -> int:
        """The CLI's exit status for this stop: 128 + the signal's number, 0 when a callback asked, 1 when the run
        diverged (a non-finite value)."""
        if self.kind is StopKind.SIGNAL:
            return 128 + int(self.signal if self.signal is not None else _signal.SIGTERM)
        return 0 if self.kind is StopKind.CALLBACK else 1
