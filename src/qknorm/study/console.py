"""Output that survives a closed pipe: `qknorm study ... | head -1` must neither hang nor print a traceback.

`emit(text, stream)` writes a line and flushes. When the reader has gone (BrokenPipeError, or another EPIPE
OSError), the stream's file descriptor is pointed at os.devnull — so this and every later write, including
Python's own flush at exit, goes nowhere quietly — and the study carries on to write its files.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Optional, TextIO

__all__ = ["emit", "log_to_stderr"]


def emit(text: str, stream: Optional[TextIO] = None) -> bool:
    """Print `text` (a newline added) to `stream` (default stdout) and flush; False when the reader is gone."""
    stream = sys.stdout if stream is None else stream
    try:
        stream.write(text + "\n")
        stream.flush()
        return True
    except OSError as e:
        if not isinstance(e, BrokenPipeError) and e.errno not in (errno.EPIPE, errno.EINVAL):
            raise
        _silence(stream)
        return False


def log_to_stderr(text: str) -> None:
    """The study's default progress log."""
    emit(text, sys.stderr)


def _silence(stream: TextIO) -> None:
    """Point the stream's descriptor at os.devnull; drop what is still buffered for the closed pipe."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (captured, closed): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    try:
        stream.flush()  # the buffered text now goes to devnull
    except OSError:
        pass
