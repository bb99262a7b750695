"""Stop requests: SIGTERM/SIGINT during training finish the current step, write a checkpoint and return.

The loop enters `StopRequest()` around its steps and checks `signame` after each one; a second SIGINT raises
KeyboardInterrupt (the user insists). Outside the main thread (e.g. a worker thread) nothing is installed.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Dict, Optional

__all__ = ["StopRequest"]


class StopRequest:
    """SIGTERM/SIGINT set a flag the loop checks after each step; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signame: Optional[str] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signame is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signame = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
