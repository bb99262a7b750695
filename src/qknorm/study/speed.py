"""How fast this machine trains a study: the probed matmul peak and each run's training FLOP/s and MFU
(docs/study_speed.md has the formulas).

    peak = probe_peak("cpu", "fp32")                       # one thread, as a study worker

FLOPs of a training step (PaLM's convention, Chowdhery et al. 2022, appendix B): per token 6 N for the matmuls
(N = the weights a token is multiplied by: every block's projections and the LM head; not the embedding lookup,
not norm gains) plus 12 L H T for attention scores and values (L layers, H = n_heads x head_dim, T = seq_len;
counted in full, as PaLM does, though a causal mask needs half); a step is batch_size x seq_len tokens.
`flops_per_s` = a step's FLOPs / the run's median step time (process CPU time on CPU, one thread; wall time on
a GPU); `mfu` = flops_per_s / the probed peak: a dense matmul of the run's dtype on one thread (CPU) or the GPU.
The stats pass and validation are not counted (they are not training): MFU is the training steps' efficiency.

The study's wall-time estimate, made before its first run, is estimate.py's.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Optional

import torch

from ..config import ModelConfig
from ..train.config import TrainConfig
from .records import RunRecord, RunSpec
from .scheduler import one_torch_thread

__all__ = ["MachinePeak", "probe_peak", "step_flops", "flops_per_s", "usable_cpus", "IMPORT_CPU_S"]

# CPU this process spent before this module was imported (Python, torch, qknorm): what a worker's start pays too
IMPORT_CPU_S = time.process_time()
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
