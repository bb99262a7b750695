"""The local scheduler of a study: run specs in `workers` spawned processes, records back as they finish.

workers == 1 runs in this process (one torch thread). Otherwise `workers` spawned processes (one torch thread
each, as in the single-process case) take one spec at a time; a run that raises comes back as a failed record;
a worker that dies (segfault, out of memory) is replaced and its run retried once, then recorded as failed —
the parent always knows which run a dead worker held.

Interrupting is the parent's business alone. Workers start with SIGINT ignored, in their own process group
(a Ctrl-C at the terminal reaches only the parent) and with their stdout/stderr sent to a log file (nothing of
theirs reaches the terminal or a pipe the user closed). On KeyboardInterrupt (Ctrl-C, or SIGTERM, which the
parent turns into one while the pool runs) or any other error, the parent kills its workers with SIGKILL — a
SIGTERM would be caught by the training loop, which finishes its step and then blocks sending a record nobody
reads — and re-raises. In this process, a run that the training loop stopped on SIGINT/SIGTERM raises
KeyboardInterrupt (its record is not a result).
"""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .records import RunRecord, RunSpec
from .run import failed_record, interrupted
from .scheduler import guarded, one_torch_thread, sigterm_interrupts

__all__ = ["LocalPool", "execute"]


class LocalPool:
    """The local scheduler (scheduler.py's interface): `workers` processes on this machine, nothing to prepare."""

    def prepare(self, *, workers: int, device: str) -> None:
        return None

    def close(self) -> None:
        return None

    def execute(self, specs: List[RunSpec], runner: Callable[[RunSpec], RunRecord], workers: int,
                on_done: Callable[[RunRecord], None], *, worker_log: Optional[Path] = None) -> None:
        execute(specs, runner, workers, on_done, worker_log=worker_log)


def _worker_main(conn, runner: Callable[[RunSpec], RunRecord], log_path: Optional[str]) -> None:
    """A worker process: receive specs, send back records, until it receives None or the parent goes away."""
    if hasattr(os, "setpgrp"):  # POSIX: out of the terminal's foreground group; Ctrl-C is the parent's to handle
        os.setpgrp()
    if log_path is not None:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for target in (1, 2):
            os.dup2(fd, target)
        os.close(fd)
    import torch

    one_torch_thread()
    torch.set_num_interop_threads(1)
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if spec is None:
            return
        try:
            conn.send(guarded(runner, spec))
        except (BrokenPipeError, OSError):
            return


def execute(specs: List[RunSpec], runner: Callable[[RunSpec], RunRecord], workers: int,
            on_done: Callable[[RunRecord], None], *, worker_log: Optional[Path] = None) -> None:
    """Run every spec; `on_done(record)` in the parent as each finishes. `worker_log`: the file worker
    processes write their stdout/stderr to (default: os.devnull)."""
    if not specs:
        return
    with sigterm_interrupts():
        if workers == 1:
            _in_process(specs, runner, on_done)
        else:
            _in_workers(specs, runner, workers, on_done, str(worker_log) if worker_log else os.devnull)


def _in_process(specs: List[RunSpec], runner: Callable[[RunSpec], RunRecord],
                on_done: Callable[[RunRecord], None]) -> None:
    import torch

    threads = one_torch_thread()
    try:
        for spec in specs:
            rec = guarded(runner, spec)
            if interrupted(rec):
                raise KeyboardInterrupt
            on_done(rec)
    finally:
        torch.set_num_threads(threads)


def _in_workers(specs: List[RunSpec], runner: Callable[[RunSpec], RunRecord], workers: int,
                on_done: Callable[[RunRecord], None], log_path: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = collections.deque(specs)
    attempts: Dict[str, int] = collections.Counter()
    running: Dict[Any, tuple] = {}  # parent end of the pipe -> (process, spec)
    procs: List[Any] = []

    def start_worker():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, runner, log_path), daemon=True)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: the child starts ignoring SIGINT
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        child.close()
        procs.append(proc)
        return parent, proc

    def dispatch(conn, proc) -> None:
        if queue:
            spec = queue.popleft()
            conn.send(spec)
            running[conn] = (proc, spec)
        else:
            conn.send(None)
            conn.close()
            proc.join(timeout=10)

    try:
        for _ in range(min(workers, len(queue))):
            dispatch(*start_worker())
        while running:
            for conn in multiprocessing.connection.wait(list(running)):
                proc, spec = running.pop(conn)
                try:
                    rec = conn.recv()
                except (EOFError, OSError):  # the worker died holding `spec`
                    proc.join(timeout=10)
                    attempts[spec.name] += 1
                    if attempts[spec.name] < 2:
                        queue.appendleft(spec)
                    else:
                        on_done(failed_record(spec, f"the worker process died twice running it (exit code "
                                                    f"{proc.exitcode})", time.perf_counter()))
                    conn.close()
                    if queue:
                        dispatch(*start_worker())
                    continue
                on_done(rec)
                dispatch(conn, proc)
    finally:
        for proc in procs:  # normally all have exited; after an error or interrupt, none may outlive us
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join(timeout=10)
