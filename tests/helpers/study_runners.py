"""Fake study runners for scheduler tests. They live in an importable module (not a test file) because Ray worker
processes import them by name; they report what happened through files under $QKNORM_TEST_DIR, since a worker's
memory is not the test's."""
import os
import signal
import time
from pathlib import Path

from qknorm.study import RunHistory, RunRecord


def attempts(name: str, marks: Path) -> int:
    """How many times a runner started the run `name` (one line a start in `marks`, the workers' QKNORM_TEST_DIR)."""
    path = marks / f"{name}.attempts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _count(spec) -> int:
    marks = Path(os.environ["QKNORM_TEST_DIR"])
    with open(marks / f"{spec.name}.attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    return attempts(spec.name, marks)


def ok_record(spec) -> RunRecord:
    val = 2.0 + abs(spec.lr - 1e-2)
    return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, init_loss=5.0, final_loss=val, val_loss=val,
                     max_attn_logit=10.0, steps=spec.train.steps,
                     history=RunHistory(step=[0, 1], loss=[5.0, val], stats_step=[0], max_attn_logit=[10.0]))


def faulty_runner(spec) -> RunRecord:
    """LR 1e-3: the worker process exits on the first attempt only (os._exit: no exception, no cleanup, as a
    segfault); 1e-2: the run raises; 1e-1: the worker process is killed on every attempt (SIGKILL to its own pid)."""
    n = _count(spec)
    if spec.lr == 1e-1:
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.lr == 1e-3 and n == 1:
        os._exit(1)
    if spec.lr == 1e-2:
        raise RuntimeError("boom")
    return ok_record(spec)


def slow_runner(spec) -> RunRecord:
    """LR 1e-1 (the first a study submits) finishes at once; the others take ten minutes (they must be cancelled)."""
    _count(spec)
    if spec.lr != 1e-1:
        time.sleep(600)
    return ok_record(spec)


def fast_runner(spec) -> RunRecord:
    _count(spec)
    return ok_record(spec)
