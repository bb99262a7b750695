"""Launch helpers for the distributed tests: forked gloo ranks (cheap) and real `torchrun` (the CLI contract).

`run_ranks(fn, *args)` forks `world_size` children of the test process (torch is already imported there, so
a rank starts in milliseconds instead of the ~5-10 s a fresh interpreter needs), gives each torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and one intra-op thread, runs
`fn(rank, *args)` and returns the ranks' results in rank order. A child that raises sends back its traceback,
which fails the test; a child that hangs is killed after `timeout` seconds (on a quiet machine: scaled by the
load, helpers/load.py).

`torchrun(args)` runs `python -m torch.distributed.run --standalone --nproc_per_node=N -m qknorm ...` as a
user would, with OMP_NUM_THREADS=1 (its timeout scaled by the load too).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from typing import Any, Callable, List

import torch

from .load import Deadline, scaled


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world: int, port: int, conn, fn: Callable, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        result = ("ok", fn(rank, *args))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        result = ("error", f"rank {rank}:\n{traceback.format_exc()}")
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        conn.send_bytes(pickle.dumps(result))
    finally:
        conn.close()
        os._exit(0)


def run_ranks(fn: Callable, *args: Any, world_size: int = 2, timeout: float = 120.0) -> List[Any]:
    """`fn(rank, *args)` on `world_size` forked ranks joined by gloo; their results in rank order."""
    ctx = mp.get_context("fork")
    port = free_port()
    procs, conns = [], []
    for rank in range(world_size):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(rank, world_size, port, send, fn, args), daemon=True)
        p.start()
        send.close()
        procs.append(p)
        conns.append(recv)
    results: List[Any] = [None] * world_size
    errors = []
    deadline = Deadline(timeout)
    try:
        for rank, conn in enumerate(conns):
            while not conn.poll(min(5.0, max(0.0, deadline.remaining()))) and deadline.remaining() > 0:
                pass  # re-read the load every 5 s: the deadline grows with it
            if not conn.poll():
                errors.append(f"rank {rank}: no result within {deadline.describe()} (hung?)")
                continue
            try:
                status, value = pickle.loads(conn.recv_bytes())
            except EOFError:
                errors.append(f"rank {rank}: died without a result")
                continue
            if status == "ok":
                results[rank] = value
            else:
                errors.append(value)
    finally:
        for p in procs:
            p.join(timeout=max(1.0, deadline.remaining()))
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return results


def python_env(**extra: str) -> dict:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def torchrun(args: List[str], *, nproc: int = 2, timeout: float = 240.0, env: dict | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=nproc -m qknorm <args>`; fails the test on a non-zero exit."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "qknorm", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(timeout), env=env or python_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stderr:\n{proc.stderr[-6000:]}")
    return proc
