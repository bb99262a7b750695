"""Progress of a long command on stderr, stage by stage, and what each stage cost.

    prog = Progress("qknorm retrofit", enabled=not args.no_progress)
    with prog.stage("calibration", total=30, unit="layer") as st:
        for layer in ...:
            ...
            st.advance()
    prog.stages      # [StageTime(name, seconds, cpu_seconds)], recorded whether or not anything is shown

What is shown depends on where stderr goes:
  a terminal      one live line per stage, redrawn at most twice a second: done/total, elapsed, and an ETA
                  from the rate so far; when the stage ends, the line is left with its time
  anything else   (a log file, a pipe, CI) one line per stage, when it ends: its wall and CPU time
  disabled        (--no-progress) nothing; `note` lines (results, warnings) are printed in every case

CPU time is the process's (time.process_time: every thread), the measure that other load on the machine skews
least. `peak_rss_mb()` is the process's peak resident memory so far.

Commands that are long only on large models (convert, inspect, generate, train --init-from) show their stages
when the model's weight files add up to LARGE_MODEL_BYTES or more (`for_model`): a small model's stages take
well under a second, and its output stays what it was.
"""
from __future__ import annotations

import dataclasses
import resource
import sys
import time
from pathlib import Path
from typing import IO, List, Optional, Union

__all__ = ["StageTime", "Progress", "Stage", "peak_rss_mb", "fmt_seconds", "for_model", "LARGE_MODEL_BYTES"]

LARGE_MODEL_BYTES = 100 << 20  # weights of ~25M fp32 / 50M bf16 parameters: reading and a pass take seconds
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".distcp")


@dataclasses.dataclass(frozen=True)
class StageTime:
    name: str
    seconds: float  # wall time
    cpu_seconds: float  # process CPU time (all threads)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def fmt_seconds(s: float) -> str:
    """12.3 s below a minute, else m:ss or h:mm:ss."""
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}:{sec:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{sec:02d}"


class Stage:
    """One stage of a Progress (from `Progress.stage`): `advance()` as its units are done."""

    def __init__(self, owner: "Progress", name: str, total: Optional[int], unit: str):
        self.owner, self.name, self.total, self.unit = owner, name, total, unit
        self.done = 0
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self._drawn = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.owner.live and (now - self._drawn >= self.owner.interval or self.done == self.total):
            self._drawn = now
            self.owner._draw(self._status(now))

    def _status(self, now: float) -> str:
        elapsed = now - self.t0
        parts = [f"{self.owner.prefix}: {self.name}"]
        if self.total:
            parts.append(f"{self.done}/{self.total} {self.unit}")
        parts.append(f"elapsed {fmt_seconds(elapsed)}")
        if self.total and 0 < self.done < self.total:
            parts.append(f"ETA {fmt_seconds(elapsed / self.done * (self.total - self.done))}")
        return ", ".join(parts)

    def __enter__(self) -> "Stage":
        if self.owner.live:
            self.owner._draw(self._status(self.t0))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        took = StageTime(self.name, time.perf_counter() - self.t0, time.process_time() - self.cpu0)
        self.owner.stages.append(took)
        self.owner.current = None
        if exc_type is not None:
            self.owner.failed = self.owner.failed or self.name  # the innermost stage an error left
            self.owner._end_line()
            return
        msg = f"{self.owner.prefix}: {self.name}: {fmt_seconds(took.seconds)} (CPU {fmt_seconds(took.cpu_seconds)})"
        if self.owner.live:
            self.owner._draw(msg)
            self.owner._end_line()
        elif self.owner.enabled:
            self.owner._line(msg)


class Progress:
    """Stages of one command (module docstring). `stream` defaults to stderr; `live` is decided from it."""

    def __init__(self, prefix: str, *, enabled: bool = True, stream: Optional[IO[str]] = None,
                 interval: float = 0.5):
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled
        self.live = enabled and bool(isatty and isatty())
        self.interval = interval
        self.stages: List[StageTime] = []
        self.current: Optional[Stage] = None
        self.failed: Optional[str] = None  # the stage an exception ended, for the error line
        self._open = False  # a live line is on the screen, without its newline

    def stage(self, name: str, total: Optional[int] = None, unit: str = "steps") -> Stage:
        self.current = Stage(self, name, total, unit)
        return self.current

    def note(self, msg: str) -> None:
        """A line that is always printed (a result, a warning), above the live line when there is one."""
        self._end_line(clear=True)
        self._line(f"{self.prefix}: {msg}")
        if self.current is not None and self.live:
            self._draw(self.current._status(time.perf_counter()))

    def seconds(self, name: str) -> float:
        """Total wall seconds of the stages called `name` (0 when none ran)."""
        return sum(s.seconds for s in self.stages if s.name == name)

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self._open = True

    def _end_line(self, clear: bool = False) -> None:
        if self._open:
            self.stream.write("\r\x1b[K" if clear else "\n")
            self.stream.flush()
            self._open = False

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _weight_bytes(path: Path, depth: int = 3) -> int:
    """Bytes of the weight files at or under `path` (a few levels: a run's checkpoints, a step directory)."""
    if path.is_file():
        return path.stat().st_size if path.suffix in _WEIGHT_SUFFIXES else 0
    total = 0
    try:
        for child in path.iterdir():
            if child.is_file() and child.suffix in _WEIGHT_SUFFIXES:
                total += child.stat().st_size
            elif child.is_dir() and depth > 0 and not child.is_symlink():
                total += _weight_bytes(child, depth - 1)
    except OSError:  # unreadable: the command's own reading reports it
        pass
    return total


def for_model(prefix: str, path: Union[str, Path], *, enabled: bool = True) -> Progress:
    """The Progress of a command reading the model at `path`: shown only when its weights are large (module
    docstring) and `enabled` (not --no-progress); stage times are recorded either way."""
    return Progress(prefix, enabled=enabled and _weight_bytes(Path(path)) >= LARGE_MODEL_BYTES)
