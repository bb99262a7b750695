"""The local scheduler of a study: run specs in `workers` spawned processes, records back as they finish.

workers == 1 runs in this process (one torch thread). Otherwise `workers` spawned processes (one torch thread
each, so the result of a run depends only on its spec, never on which worker ran it) take one spec at a time;
a run that raises comes back as a failed record; a worker that dies (segfault, out of memory) is replaced and
its run retried once, then recorded as failed — the parent always knows which run a dead worker held.
"""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import time
import traceback
from typing import Any, Callable, Dict, List

from .records import RunRecord, RunSpec
from .run import failed_record

__all__ = ["execute"]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _worker_main(conn, runner: Callable[[RunSpec], RunRecord]) -> None:
    """A worker process: receive specs, send back records, until it receives None."""
    _worker_init()
    while True:
        spec = conn.recv()
        if spec is None:
            return
        conn.send(_guarded(runner, spec))


def execute(specs: List[RunSpec], runner: Callable[[RunSpec], RunRecord], workers: int,
            on_done: Callable[[RunRecord], None]) -> None:
    """Run every spec; `on_done(record)` in the parent as each finishes.

    workers == 1 runs in this process (one torch thread). Otherwise `workers` spawned processes take one
    spec at a time; a worker that dies (segfault, out of memory) is replaced and its run retried once, then
    recorded as failed — the parent always knows which run a dead worker held."""
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for spec in specs:
                on_done(_guarded(runner, spec))
        finally:
            torch.set_num_threads(threads)
        return
    ctx = multiprocessing.get_context("spawn")
    queue = collections.deque(specs)
    attempts: Dict[str, int] = collections.Counter()
    running: Dict[Any, tuple] = {}  # parent end of the pipe -> (process, spec)

    def start_worker():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, runner), daemon=True)
        proc.start()
        child.close()
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
        for proc, _ in running.values():
            proc.terminate()


def _guarded(runner: Callable[[RunSpec], RunRecord], spec: RunSpec) -> RunRecord:
    """`runner(spec)`, with anything it raises turned into a failed-run record."""
    t0 = time.perf_counter()
    try:
        return runner(spec)
    except BaseException as e:  # noqa: BLE001 - a run never takes the study down
        if isinstance(e, KeyboardInterrupt):
            raise
        return failed_record(spec, f"{type(e).__name__}: {e}", t0, trace=traceback.format_exc(limit=4))
