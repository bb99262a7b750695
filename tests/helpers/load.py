"""Waiting on other processes on a busy machine: timeouts that scale with the measured load, and polling waits.

Tests that start processes (forked gloo ranks, torchrun, `qknorm study` workers, kill -9 trials, Ray) wait for
them with a timeout whose only job is to catch a hang. Seconds measured on a quiet machine fail on a loaded one:
at load average 10 on 2 cores every runnable process gets about 1/5 of a core, so it takes ~5x as long. Here the
timeout is multiplied by the load per core this process may use (the larger of the 1- and 5-minute load
averages over the cores in its affinity mask, so `taskset -c 0` counts one core), never by less than 1:

    load_factor()        min(MAX_FACTOR, max(1, load / cores)) * QKNORM_TEST_TIME_SCALE (default 1: for a
                         machine slow in a way the load average does not show, e.g. a throttled VM); capped so
                         that a real hang still fails within MAX_FACTOR x the quiet timeout
    scaled(s)            s * load_factor(), for a blocking call's timeout (subprocess.run, communicate, poll)
    Deadline(s)          a deadline whose factor is re-read while waiting: it only grows, if the load rises
    wait_until(cond, ..) polls cond() until it is true, failing early if the process it waits for exits

Waits for an event (a file appearing, a process count) poll for it rather than sleeping a guessed time.
"""
from __future__ import annotations

import os
import subprocess
import time
from typing import Callable, Optional, TypeVar

__all__ = ["MAX_FACTOR", "load_factor", "scaled", "Deadline", "wait_until"]

T = TypeVar("T")
MAX_FACTOR = 20.0  # load average 40 on 2 cores


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_factor() -> float:
    """How many times slower than on an idle machine a process here may run (>= 1)."""
    one, five, _ = os.getloadavg()
    factor = min(MAX_FACTOR, max(1.0, max(one, five) / _cores()))
    return factor * float(os.environ.get("QKNORM_TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    """`seconds` (a quiet machine's generous timeout) times the load factor now."""
    return seconds * load_factor()


class Deadline:
    """`seconds` from now, times the largest load factor seen since (re-read on every `remaining()`)."""

    def __init__(self, seconds: float):
        self.seconds, self.start, self.factor = seconds, time.monotonic(), load_factor()

    def remaining(self) -> float:
        self.factor = max(self.factor, load_factor())
        return self.start + self.seconds * self.factor - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def describe(self) -> str:
        return (f"{time.monotonic() - self.start:.0f} s ({self.seconds:g} s quiet x load factor "
                f"{self.factor:.1f}, load average {os.getloadavg()[0]:.1f} on {_cores()} cores)")


def wait_until(cond: Callable[[], T], what: str, timeout: float, *,
               proc: Optional[subprocess.Popen] = None, poll: float = 0.01) -> T:
    """Poll `cond()` until it returns something true and return that; AssertionError naming `what` when the
    (load-scaled) `timeout` passes, or at once when `proc` exits first."""
    deadline = Deadline(timeout)
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read()[-3000:] if proc.stderr is not None else ""
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}: {err}")
        if deadline.expired():
            raise AssertionError(f"timed out after {deadline.describe()} waiting for {what}")
        time.sleep(poll)
