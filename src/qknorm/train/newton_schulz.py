"""Muon's Newton-Schulz orthogonalization in a chosen dtype, and the measured choice of that dtype on this machine.

The iteration is torch.optim.Muon's (torch/optim/_muon.py, after Keller Jordan's Muon): X = G / max(||G||_F, eps)
(transposed so that rows <= columns), then `steps` times

    A = X X^T;   B = b A + c A A;   X = a X + B X          (a, b, c) = (3.4445, -4.7750, 2.0315)

which drives every singular value of G towards ~1 (to within roughly 0.7..1.2, not exactly 1: the coefficients
trade convergence for slope at zero). torch runs it in bfloat16. Here `dtype` picks bfloat16 (bit-for-bit
torch's arithmetic: the same operations in the same order) or float32 (the same operations on float32 copies).

Why a choice: bf16 matmuls are fast only where the hardware has them (GPUs, CPUs with AVX512-BF16/AMX).
On an AVX2-only CPU PyTorch emulates them at ~1-3 GFLOP/s against 30-100 for fp32, and Muon's step cost
~7x AdamW's. `choose_ns_dtype("auto", ...)` times one Newton-Schulz iteration at the optimizer's own matrix shape
in both dtypes (process CPU time on CPU, so a loaded machine does not skew it; synchronized wall time on a GPU)
and keeps bf16 unless it is more than `SLOW_FACTOR` x slower than fp32. The result is cached per process
(device type and shape), so a study worker probes once.

Numerical difference (measured, docs/study_speed.md): fp32 gives the float64
iteration's result to ~1e-6 relative error, bf16 to ~1e-2 — bf16's own rounding (8 bits of mantissa); both are far
inside the ~+-30% spread of singular values the iteration leaves by design.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Optional, Tuple

import torch

__all__ = ["NS_COEFFICIENTS", "NS_STEPS", "NS_EPS", "SLOW_FACTOR", "NSPrecision", "newton_schulz",
           "choose_ns_dtype", "probe_ns_seconds"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults (Keller Jordan's)
NS_STEPS = 5
NS_EPS = 1e-7
SLOW_FACTOR = 1.25  # fp32 is chosen when bf16 takes more than this many times fp32's time
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_PROBE_MAX = (256, 1024)  # the probe's matrix is the optimizer's, capped to this (rows, cols): a short probe
_PROBE_MIN_S = 0.01  # each dtype is timed for at least this long (repeats of one iteration)


@dataclasses.dataclass(frozen=True)
class NSPrecision:
    """The dtype Muon's Newton-Schulz runs in, and why: "set" (asked for), "probed" (timed here), "recorded" (a
    resumed run keeps the dtype its run.json records) or "rank 0's probe" (every rank of a run uses rank 0's)."""

    dtype: str  # "bf16" or "fp32"
    how: str  # "set", or "probed": which was faster at `shape`, with the two timings
    shape: Optional[Tuple[int, int]] = None  # the probed matrix (rows, cols)
    bf16_ms: Optional[float] = None  # one Newton-Schulz iteration at `shape`, per dtype
    fp32_ms: Optional[float] = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def describe(self) -> str:
        if self.how != "probed":
            return f"Newton-Schulz in {self.dtype} ({self.how})"
        return (f"Newton-Schulz in {self.dtype}: one iteration at {self.shape[0]}x{self.shape[1]} took "
                f"{self.bf16_ms:.3g} ms in bf16, {self.fp32_ms:.3g} ms in fp32 (probed)")

    def to_json(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def newton_schulz(grad: torch.Tensor, dtype: torch.dtype, *, coefficients=NS_COEFFICIENTS, steps: int = NS_STEPS,
                  eps: float = NS_EPS) -> torch.Tensor:
    """The orthogonalized `grad` (2-D, (rows, cols)) by `steps` quintic Newton-Schulz iterations in `dtype`;
    returned in `dtype`, `grad` untouched. torch.optim.Muon's `_zeropower_via_newtonschulz` with the dtype free."""
    if grad.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(grad.shape)}")
    a, b, c = coefficients
    x = grad.to(dtype, copy=True)  # (rows, cols)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T  # (m, n), m <= n: the Gram matrix is the small one
    x.div_(x.norm().clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A A
        x = torch.addmm(x, update, x, beta=a)  # a X + B X: (m, n)
    return x.T if tall else x


_CACHE: Dict[Tuple[str, Tuple[int, int]], NSPrecision] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_ns_seconds(dtype: torch.dtype, shape: Tuple[int, int], device: torch.device) -> float:
    """Seconds one Newton-Schulz iteration takes at `shape` in `dtype` here: the best of repeats, each repeat
    timed for >= 10 ms (process CPU time on CPU, synchronized wall time elsewhere)."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) / (shape[0] * shape[1]) ** 0.5).to(device=device, dtype=dtype)
    a, b, c = NS_COEFFICIENTS

    def one() -> None:
        gram = x @ x.T
        torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)

    one()  # warm-up: kernel selection, allocations
    _sync(device)
    best = float("inf")
    for _ in range(3):
        n, t0 = 0, clock()
        while True:
            one()
            n += 1
            _sync(device)
            dt = clock() - t0
            if dt >= _PROBE_MIN_S or n >= 1000:
                break
        best = min(best, dt / n)
    return best


def choose_ns_dtype(setting: str, device: torch.device, shape: Tuple[int, int]) -> NSPrecision:
    """The Newton-Schulz dtype for `setting` ("bf16", "fp32", or "auto": probed at `shape`, the optimizer's most
    common (rows, cols), on `device`; cached per process)."""
    if setting in _DTYPES:
        return NSPrecision(dtype=setting, how="set")
    m, n = sorted(shape)
    probe_shape = (min(m, _PROBE_MAX[0]), min(n, _PROBE_MAX[1]))
    key = (torch.device(device).type, probe_shape)
    if key not in _CACHE:
        dev = torch.device(device)
        bf16 = probe_ns_seconds(torch.bfloat16, probe_shape, dev)
        fp32 = probe_ns_seconds(torch.float32, probe_shape, dev)
        _CACHE[key] = NSPrecision(dtype="fp32" if bf16 > SLOW_FACTOR * fp32 else "bf16", how="probed",
                                  shape=probe_shape, bf16_ms=round(1e3 * bf16, 4), fp32_ms=round(1e3 * fp32, 4))
    return _CACHE[key]
