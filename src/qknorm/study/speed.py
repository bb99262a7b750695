"""How fast this machine trains a study: the probed matmul peak, each run's training FLOP/s and MFU, and the
study's wall-time estimate made here before the first run (docs/study_speed.md has the formulas).

    peak = probe_peak("cpu", "fp32")                       # one thread, as a study worker
    est = estimate_study(todo, workers)                    # trains the first run of each optimizer a few steps

FLOPs of a training step (PaLM's convention, Chowdhery et al. 2022, appendix B): per token 6 N for the matmuls
(N = the weights a token is multiplied by: every block's projections and the LM head; not the embedding lookup,
not norm gains) plus 12 L H T for attention scores and values (L layers, H = n_heads x head_dim, T = seq_len;
counted in full, as PaLM does, though a causal mask needs half); a step is batch_size x seq_len tokens.
`flops_per_s` = a step's FLOPs / the run's median step time (process CPU time on CPU, one thread; wall time on
a GPU); `mfu` = flops_per_s / the probed peak: a dense matmul of the run's dtype on one thread (CPU) or the GPU.
The stats pass and validation are not counted (they are not training): MFU is the training steps' efficiency.

The estimate: the first run of each optimizer among the runs to train is trained for `CALIBRATION_STEPS` steps in
this process (one torch thread, through `run_one`, so it is the real loop with the real stats pass): its median
step CPU time and its fixed cost (set-up, validation) give a run's cost at the full step count; the runs are
spread over min(workers, CPUs) and every worker pays a start-up: what this process spent importing Python, torch
and qknorm, and reading the data. It assumes quiet cores: other jobs on the machine make the wall time longer,
not the CPU time.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..config import ModelConfig
from ..train.config import TrainConfig
from .records import RunRecord, RunSpec
from .run import run_one
from .scheduler import one_torch_thread

__all__ = ["MachinePeak", "Estimate", "probe_peak", "step_flops", "flops_per_s", "estimate_study",
           "CALIBRATION_STEPS", "usable_cpus"]

# CPU this process spent before this module was imported (Python, torch, qknorm): what a worker's start pays too
IMPORT_CPU_S = time.process_time()
CALIBRATION_STEPS = 11  # steps 1..10 hold one stats pass at the default stats_every=10, as a full run does
_PEAK_N = {"cpu": 512, "cuda": 4096}  # the probe's square matmul size per device type
_PEAK_MIN_S = 0.05


@dataclasses.dataclass(frozen=True)
class MachinePeak:
    """The probed matmul throughput a run is compared against, and how it was probed."""

    flops_per_s: float
    how: str

    def to_json(self) -> Dict[str, Any]:
        return {"peak_flops": self.flops_per_s, "peak_probe": self.how}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def probe_peak(device: str, dtype: str) -> MachinePeak:
    """The best FLOP/s of a dense (n x n) @ (n x n) matmul in `dtype` on `device`: on CPU with one torch thread
    (as every study run) and process CPU time; on a GPU with synchronized wall time. Best of 3 repeats of
    >= 50 ms each (~0.2 s)."""
    dev = torch.device(device)
    n = _PEAK_N.get(dev.type, 1024)
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    cpu = dev.type == "cpu"
    clock = time.process_time if cpu else time.perf_counter
    threads = one_torch_thread() if cpu else None
    try:
        a = torch.randn(n, n, device=dev).to(tdtype)
        b = torch.randn(n, n, device=dev).to(tdtype)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        a @ b
        sync()
        best = 0.0
        for _ in range(3):
            k, t0 = 0, clock()
            while True:
                a @ b
                k += 1
                sync()
                dt = clock() - t0
                if dt >= _PEAK_MIN_S:
                    break
            best = max(best, 2 * n ** 3 * k / dt)
    finally:
        if threads is not None:
            torch.set_num_threads(threads)
    where = "1 torch thread, process CPU time" if cpu else f"{dev.type}, synchronized wall time"
    return MachinePeak(flops_per_s=round(best, -6), how=f"{dtype} matmul {n}x{n}x{n}, {where}, best of 3 repeats "
                       f"of >= {_PEAK_MIN_S * 1e3:.0f} ms")


def step_flops(model: ModelConfig, train: TrainConfig) -> float:
    """Training FLOPs of one step: tokens x (6 N + 12 L H T) (module docstring)."""
    d, hd = model.d_model, model.head_dim
    per_layer = d * hd * (2 * model.n_heads + 2 * model.n_kv_heads) + 3 * d * model.d_ff  # q, k, v, o; gate, up, down
    n_matmul = model.n_layers * per_layer + model.vocab_size * d  # + the LM head (tied or not)
    attention = 12 * model.n_layers * model.n_heads * model.head_dim * train.seq_len
    return float(train.batch_size * train.seq_len * (6 * n_matmul + attention))


def flops_per_s(spec: RunSpec, rec: RunRecord) -> Optional[float]:
    """The run's training FLOP/s over its median step (CPU time on CPU, wall time elsewhere); None if unmeasured."""
    ms = rec.step_cpu_ms if spec.train.device == "cpu" else rec.step_ms
    return round(step_flops(spec.model, spec.train) / (ms / 1e3), -3) if ms else None


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The study's predicted cost on this machine, from `CALIBRATION_STEPS` steps of each optimizer's first run."""

    wall_s: float  # predicted wall time of the runs to train, on quiet cores
    cpu_s: float  # their summed CPU time
    runs: int
    parallel: int  # runs at once: min(workers, usable CPUs, runs)
    step_s: Dict[str, float]  # optimizer -> median step time (CPU s on CPU)
    run_fixed_s: Dict[str, float]  # optimizer -> a run's cost besides its steps (set-up, validation)
    startup_s: float  # a worker's start-up: importing torch and qknorm, reading the data
    calibration_s: float  # what measuring cost, before the study

    def describe(self) -> str:
        steps = ", ".join(f"{o} {1e3 * s:.0f} ms" for o, s in self.step_s.items())
        return (f"estimate: ~{_minutes(self.wall_s)} wall for {self.runs} runs on {self.parallel} quiet "
                f"{'core' if self.parallel == 1 else 'cores'} ({self.cpu_s:.0f} CPU s; a step: {steps}; measured "
                f"here in {self.calibration_s:.1f} s)")

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _shortened(spec: RunSpec, n: int) -> RunSpec:
    """`spec` cut to `n` steps (warmup within them), without the study's deadline."""
    warmup = min(spec.train.warmup, n - 1) if n > 1 else 0
    return dataclasses.replace(spec, train=spec.train.replace(steps=n, warmup_steps=warmup), deadline=None)


def _minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def estimate_study(specs: Sequence[RunSpec], workers: int) -> Optional[Estimate]:
    """The wall time `specs` will take on `workers` workers here (module docstring); None when there is nothing
    to train or a calibration run does not finish (its error is the study's to report, not the estimate's).
    A worker's start-up: `IMPORT_CPU_S` and its first run's one-off costs (none with one worker: this process
    trains, and has paid them)."""
    if not specs:
        return None
    t0 = time.process_time()
    step_s: Dict[str, float] = {}
    fixed_s: Dict[str, float] = {}
    threads = one_torch_thread()
    try:
        # a worker's first run pays once what later runs do not (reading the data, first-call set-up in torch):
        # a 1-step run pays it here, so the calibration runs measure what every run costs
        run_one(_shortened(specs[0], 1))
        startup_cpu_s = 0.0 if workers == 1 else IMPORT_CPU_S + time.process_time() - t0
        for spec in specs:
            opt = spec.optimizer
            if opt in step_s:
                continue
            n = min(spec.train.steps, CALIBRATION_STEPS)
            rec = run_one(_shortened(spec, n))
            ms = rec.step_cpu_ms if spec.train.device == "cpu" else rec.step_ms
            spent = rec.cpu_s if spec.train.device == "cpu" else rec.time_s
            if not rec.status.measured or not ms or spent is None:
                return None
            step_s[opt] = ms / 1e3
            fixed_s[opt] = max(0.0, spent - n * step_s[opt])
    finally:
        torch.set_num_threads(threads)
    costs: List[float] = [fixed_s[s.optimizer] + s.train.steps * step_s[s.optimizer] for s in specs]
    parallel = max(1, min(workers, usable_cpus(), len(specs)))
    # runs go to the next free worker: about ceil(runs / parallel) runs of the mean cost each, after start-up
    wall = startup_cpu_s + math.ceil(len(costs) / parallel) * sum(costs) / len(costs)
    return Estimate(wall_s=round(wall, 1), cpu_s=round(sum(costs), 1), runs=len(costs), parallel=parallel,
                    step_s={k: round(v, 5) for k, v in step_s.items()},
                    run_fixed_s={k: round(v, 3) for k, v in fixed_s.items()}, startup_s=round(startup_cpu_s, 2),
                    calibration_s=round(time.process_time() - t0, 2))
