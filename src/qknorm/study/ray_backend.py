"""The Ray scheduler of a study: each run is a Ray task, on a local Ray instance or on an existing cluster.

    scheduler = RayScheduler()                      # starts a local Ray instance (num_cpus = workers), shuts it down
    scheduler = RayScheduler("10.0.0.1:6379")       # a running cluster: its head's address, ray://HOST:10001, auto
                                                    # (no address: $RAY_ADDRESS when set, as for any Ray driver)
    run_study(plan, "study_out", scheduler=scheduler)

Resources of a run: 1 CPU (a run trains with one torch thread, as in the local pool) and, when the study's device
is cuda, 1/workers of a GPU — so `workers` runs share each GPU, as `workers` local processes share one today
(workers=1: a whole GPU per run). Ray packs the tasks onto the nodes; concurrency is what the cluster has
(the local instance is started with `workers` CPUs, so --workers keeps its meaning on one machine).

Faults. A run that raises comes back as a failed record (the worker catches it, as the local pool does). A worker
that dies (killed process, segfault, lost node) is retried by Ray up to MAX_RETRIES times (its `max_retries` for
system failures; on the local instance Ray's memory monitor's kills too, which Ray would otherwise retry without
end), then the run is recorded `failed` with Ray's reason: never dropped, never counted as divergence. Ctrl-C
(or SIGTERM) cancels every outstanding task (`ray.cancel(force=True)`) and propagates KeyboardInterrupt.

Nothing runs on the driver but the bookkeeping: records stream back as tasks finish (`ray.wait`), and the
driver alone writes files. Workers write nothing (the training loop writes only with an out_dir, which the study
never gives), print to Ray's logs on their node (not to the terminal), read the data themselves from the spec's
path (made absolute here: a relative path means the same on every worker) and check it against the spec's data
fingerprint (run.py), and refuse to run when their qknorm or torch version differs from the driver's (the versions
are part of a run's identity). Ray's own notices (e.g. "a worker died") go to stderr with the progress log, never
to stdout, where the table is printed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import math
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError
from ..version import __version__
from .console import log_to_stderr
from .records import RunRecord, RunSpec
from .run import failed_record
from .scheduler import OnDone, Runner, guarded, one_torch_thread, sigterm_interrupts

__all__ = ["RayScheduler", "MAX_RETRIES", "gpu_share", "import_ray", "RAY_EXTRA"]

MAX_RETRIES = 2  # a run whose worker dies is tried at most 3 times, then recorded failed
RAY_EXTRA = "pip install 'qknorm[ray]'"
_ADDRESS = re.compile(r"^(auto|ray://[^\s/:]+(:\d+)?|[^\s/:]+:\d+)$")
# a task's errors after Ray retried it max_retries times: its worker process or its node died on every attempt
_WORKER_DIED = ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError")


def import_ray() -> Any:
    """The `ray` module, or ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module("ray")
    except ImportError as e:
        raise ConfigError(f"backend=ray needs Ray, an optional extra: {RAY_EXTRA} ({e})") from None


def gpu_share(workers: int) -> float:
    """The GPU fraction of one run when `workers` runs share a GPU: 1/workers, rounded down to Ray's resolution
    (1e-4) so that `workers` of them fit on one GPU."""
    return math.floor(1e4 / workers) / 1e4


@dataclasses.dataclass(frozen=True)
class _Driver:
    """What a worker must match to run a spec: the versions that are part of the spec's identity."""

    qknorm: str
    torch: str


def _on_worker(spec: RunSpec, runner: Runner, driver: _Driver) -> RunRecord:
    """The Ray task: one run in a Ray worker process, with one torch thread; a failed record names the node."""
    t0 = time.perf_counter()
    here = _Driver(qknorm=__version__, torch=torch.__version__)
    if here != driver:
        return failed_record(spec, f"worker {socket.gethostname()} has qknorm {here.qknorm}, torch {here.torch}; the "
                                   f"study runs qknorm {driver.qknorm}, torch {driver.torch}: install the same "
                                   "versions on every node", t0)
    one_torch_thread()
    with contextlib.suppress(RuntimeError):  # once per process; a reused worker has it set already
        torch.set_num_interop_threads(1)
    rec = guarded(runner, spec)
    if rec.failed and rec.error:
        rec = dataclasses.replace(rec, error=f"{rec.error} [on {socket.gethostname()}]")
    return rec


def _for_worker(spec: RunSpec) -> RunSpec:
    """The spec a worker receives: data and tokenizer paths absolute (relative to this process's directory)."""
    def absolute(path: Optional[str]) -> Optional[str]:
        return None if path is None else os.path.abspath(path)

    return dataclasses.replace(spec, data=absolute(spec.data), tokenizer=absolute(spec.tokenizer))


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


class RayScheduler:
    """Runs a study's specs as Ray tasks (module docstring); scheduler.py's interface."""

    def __init__(self, address: Optional[str] = None, *, max_retries: int = MAX_RETRIES,
                 log: Callable[[str], None] = log_to_stderr) -> None:
        address = address if address is not None else os.environ.get("RAY_ADDRESS") or None  # Ray's own default
        if address is not None and not _ADDRESS.match(address):
            raise ConfigError(f"ray_address={address!r}: give the cluster's address as HOST:PORT (the head node's "
                              "`ray start --head` port, 6379 by default), ray://HOST:PORT (Ray Client, port 10001) "
                              "or auto (the cluster `ray start` runs on this machine)")
        self.ray = import_ray()
        if address is not None and address.startswith("ray://"):
            try:
                importlib.import_module("grpc")
            except ImportError:
                raise ConfigError(f"ray_address={address}: Ray Client needs grpcio: {RAY_EXTRA}") from None
        self.address, self.max_retries, self.log = address, max_retries, log
        self._gpus = 0.0
        self._started = False  # whether prepare() started Ray (then execute() shuts it down)

    def prepare(self, *, workers: int, device: str) -> None:
        """Start a local Ray instance with `workers` CPUs, or connect to the cluster; check it can run the runs."""
        ray = self.ray
        if device.startswith("cuda:"):
            raise ConfigError(f"device={device}: with backend=ray each run trains on the GPU Ray assigns to it; "
                              "give device=cuda")
        self._gpus = gpu_share(workers) if device.startswith("cuda") else 0.0
        where = "the running Ray instance"
        if not ray.is_initialized():
            self._connect(workers)
            where = "a local Ray instance" if self.address is None else f"the Ray cluster at {self.address}"
        try:
            res = ray.cluster_resources()
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            if self._gpus and not res.get("GPU"):
                raise ConfigError(f"device={device}: {where} has no GPU; start its nodes with GPUs (ray start "
                                  "--num-gpus N) or give device=cpu")
        except BaseException:
            self.close()
            raise
        per_run = "1 CPU" + (f" and {self._gpus:g} GPU ({workers} runs a GPU)" if self._gpus else "")
        self.log(f"ray: {where}, {nodes} node{'s' if nodes != 1 else ''}, {res.get('CPU', 0):g} CPUs, "
                 f"{res.get('GPU', 0):g} GPUs; each run takes {per_run}; a run whose worker dies is tried "
                 f"{self.max_retries + 1} times")

    def _connect(self, workers: int) -> None:
        ray = self.ray
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        try:
            if self.address is None:
                # address="local": a new instance, even when this machine ran `ray start` (its address is in
                # /tmp/ray/ray_current_cluster, where ray.init() without an address would connect)
                ray.init(address="local", num_cpus=workers, include_dashboard=False,
                         _system_config={"task_oom_retries": self.max_retries}, **quiet)
                self._started = True
            else:
                ray.init(address=self.address, **quiet)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... for a bad cluster
            with contextlib.suppress(Exception):
                ray.shutdown()
            if self.address is None:
                raise ConfigError(f"backend=ray: could not start a local Ray instance ({type(e).__name__}: "
                                  f"{_first_line(e)})") from None
            raise ConfigError(f"ray_address={self.address}: could not connect ({type(e).__name__}: {_first_line(e)});"
                              " check the address and that this machine reaches the head node; a cluster with token "
                              "authentication needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
                              "~/.ray/auth_token) here too") from None

    def close(self) -> None:
        """Shut down the local Ray instance prepare() started (a cluster, or a Ray started by the caller, is left
        running); idempotent."""
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                self.ray.shutdown()

    def execute(self, specs: List[RunSpec], runner: Runner, workers: int, on_done: OnDone, *,
                worker_log: Optional[Path] = None) -> None:
        """Submit every spec as a task; `on_done(record)` as each finishes; shut down a Ray this started."""
        ray = self.ray
        try:
            if not specs:
                return
            if not ray.is_initialized():
                self.prepare(workers=workers, device=specs[0].train.device)
            task = ray.remote(num_cpus=1, num_gpus=self._gpus, max_retries=self.max_retries,
                              retry_exceptions=False)(_on_worker)
            driver = _Driver(qknorm=__version__, torch=torch.__version__)
            pending: Dict[Any, Tuple[RunSpec, float]] = {}
            with sigterm_interrupts(), contextlib.redirect_stdout(sys.stderr):
                try:
                    for spec in specs:
                        ref = task.options(name=f"qknorm-study:{spec.name}").remote(_for_worker(spec), runner, driver)
                        pending[ref] = (spec, time.perf_counter())
                    while pending:
                        done, _ = ray.wait(list(pending), num_returns=1)
                        for ref in done:
                            spec, t0 = pending.pop(ref)
                            on_done(self._record(ref, spec, t0))
                except BaseException:
                    self._cancel(pending)
                    raise
        finally:
            self.close()

    def _record(self, ref: Any, spec: RunSpec, t0: float) -> RunRecord:
        """The task's record, or a failed record saying why Ray could not give one."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as e:
            died = tuple(getattr(ray.exceptions, n) for n in _WORKER_DIED if hasattr(ray.exceptions, n))
            if isinstance(e, died):
                why = f"its Ray worker died {self.max_retries + 1} times"
            elif isinstance(e, ray.exceptions.OutOfMemoryError):  # retried per the cluster's task_oom_retries
                why = "Ray's memory monitor killed its worker (the node ran low on memory)"
            elif isinstance(e, ray.exceptions.RayTaskError):
                why = "Ray could not run it on a worker (is the same qknorm installed on every node?)"
            else:
                why = "Ray did not run it to the end"
            return failed_record(spec, f"{why} ({type(e).__name__}: {_first_line(e)})", t0)

    def _cancel(self, pending: Dict[Any, Tuple[RunSpec, float]], patience_s: float = 15.0) -> None:
        """Cancel every outstanding task and wait (up to `patience_s`) until each has ended, cancelling again the
        ones still running: a task caught between lease and start can miss a single cancel and then hold its CPU
        (or GPU share) until the run ends (seen once in CI, a 10-minute test run kept one of 2 CPUs)."""
        refs, deadline = list(pending), time.monotonic() + patience_s
        while refs and time.monotonic() < deadline:
            for ref in refs:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
            with contextlib.suppress(Exception):
                _, refs = self.ray.wait(refs, num_returns=len(refs), timeout=1.0)
