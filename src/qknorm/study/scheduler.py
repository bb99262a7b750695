"""How a study's runs are scheduled: the interface every scheduler implements, and the pieces they share.

    scheduler = LocalPool()                          # pool.py: spawned processes on this machine (the default)
    scheduler = RayScheduler("head-node:6379")       # ray_backend.py: Ray tasks, on a local instance or a cluster
    scheduler.prepare(workers=2, device="cpu")       # before the study writes anything: a bad address fails here
    scheduler.execute(specs, run_one, 2, on_done)    # on_done(record), in this process, as each run finishes
    scheduler.close()                                # idempotent: also when the study fails before execute

The contract, for every scheduler:
- every spec comes back exactly once through `on_done`: as its runner's record, or as a `failed` record (the run
  raised, or its worker died more often than the scheduler retries it) — never dropped, never a divergence;
- a run depends only on its spec: each one trains with one torch thread in a fresh or reused worker process, so
  the same spec gives the same numbers on either scheduler;
- workers return records and write nothing; only `on_done` (the driver) writes the study's files, so a cluster
  needs no shared filesystem;
- KeyboardInterrupt (Ctrl-C, or SIGTERM while a study runs) stops every outstanding run and propagates; records
  that arrive after it are not results.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Protocol

import torch

from .records import RunRecord, RunSpec
from .run import failed_record

__all__ = ["Scheduler", "Runner", "OnDone", "guarded", "one_torch_thread", "sigterm_interrupts"]

Runner = Callable[[RunSpec], RunRecord]
OnDone = Callable[[RunRecord], None]


class Scheduler(Protocol):
    """Runs a study's specs somewhere and hands their records back as they finish (module docstring)."""

    def prepare(self, *, workers: int, device: str) -> None:
        """Get ready to run (start or connect to what runs the specs); raise ConfigError for a setting that cannot
        work. Called before the study writes anything."""

    def execute(self, specs: List[RunSpec], runner: Runner, workers: int, on_done: OnDone, *,
                worker_log: Optional[Path] = None) -> None:
        """Run every spec with `runner`; `on_done(record)` for each as it finishes; then release what `prepare`
        started. `workers`: runs at once (the local pool) or runs per GPU (Ray); `worker_log`: where worker
        processes on this machine may write what they print."""

    def close(self) -> None:
        """Release what `prepare` started, if `execute` has not (the study failed between them); idempotent."""


def guarded(runner: Runner, spec: RunSpec) -> RunRecord:
    """`runner(spec)`, with anything it raises turned into a failed-run record (KeyboardInterrupt propagates)."""
    t0 = time.perf_counter()
    try:
        return runner(spec)
    except BaseException as e:  # noqa: BLE001 - a run never takes the study down
        if isinstance(e, KeyboardInterrupt):
            raise
        return failed_record(spec, f"{type(e).__name__}: {e}", t0, trace=traceback.format_exc(limit=4))


def one_torch_thread() -> int:
    """Make torch use one intra-op thread (as every run of a study does); return the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While a study runs, SIGTERM to this process raises KeyboardInterrupt (so its runs are stopped too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
