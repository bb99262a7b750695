"""How benchmarks time work: GPU time from CUDA events over back-to-back iterations; a crash check on CPU.

On CUDA, `time_cuda` runs `fn` `iters` times back to back (no synchronisation in between, so the host can run
ahead and launch gaps show only where the host is slower than the GPU), brackets the batch with two CUDA
events, and divides; it does that `repeats` times and reports the median and the minimum per iteration.
Where the host is the bottleneck the per-iteration time is the host's: that is what a training loop sees.

On CPU (`--cpu-smoke`) the same code runs a couple of iterations under a wall clock: the figure proves that
the benchmark runs, nothing more (the Triton interpreter is ~1000x slower than a GPU).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, List

import torch


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timer:
    """How to time: `iters` back-to-back calls a sample, `repeats` samples, after `warmup` calls."""

    device: str  # "cuda" or "cpu"
    iters: int = 100
    repeats: int = 5
    warmup: int = 10

    def __call__(self, fn: Callable[[], object]) -> float:
        """Median milliseconds per call of fn."""
        return statistics.median(self.samples(fn))

    def samples(self, fn: Callable[[], object]) -> List[float]:
        """Milliseconds per call, one value per repeat."""
        return time_cuda(fn, self) if self.device == "cuda" else time_wall(fn, self)

    def describe(self) -> str:
        if self.device == "cuda":
            return (f"CUDA events around {self.iters} back-to-back calls, median of {self.repeats} such batches, "
                    f"after {self.warmup} warm-up calls")
        return f"wall clock, median of {self.repeats} x {self.iters} call(s) (a CPU smoke: not a measurement)"

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "method": self.describe()}


def time_cuda(fn: Callable[[], object], t: Timer) -> List[float]:
    for _ in range(t.warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(t.repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(t.iters):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / t.iters)
    return out


def time_wall(fn: Callable[[], object], t: Timer) -> List[float]:
    for _ in range(t.warmup):
        fn()
    out = []
    for _ in range(t.repeats):
        t0 = time.perf_counter()
        for _ in range(t.iters):
            fn()
        out.append((time.perf_counter() - t0) * 1e3 / t.iters)
    return out


def cpu_smoke_timer() -> Timer:
    return Timer(device="cpu", iters=1, repeats=1, warmup=1)
