"""Study profiles: a model shape shared by every variant, training settings, the LR grid and defaults.

  quick    first look: baseline vs qknorm, 5 LRs 3e-4..3e-2, 200 steps
  default  all five variants, Wortsman et al.'s 7 LRs 3e-4..3e-1, 300 steps
  gpu      all five variants, the same 7 LRs, a bigger model, bf16, cosine, 1200 steps, 8 runs at once
  stabilizers      all twelve variants x AdamW and Muon, 5 LRs 3e-4..3e-2, 2 seeds, 150 steps, the default
                   profile's model: 240 runs; every arm's best LR was inside the grid (1e-3..1e-2;
                   bench/results/stabilizers_study_cpu_2026-11-30.md)
  stabilizers_gpu  its twin for `--device cuda` (the gpu profile's model, bf16, 250 steps)
  smoke    the gpu profile's code path at a tiny size and 6 steps (tests, dry runs): not a measurement

How long a profile takes depends on the machine (a CPU without fast bf16, another core count): no profile
carries a minute count measured elsewhere. `qknorm study` measures this machine before its first run (a matmul
probe and a few steps of the first run of each optimizer, study/speed.py) and prints its own estimate.

The CPU grids are half-decade steps (Wortsman et al.'s spacing) chosen from measured runs so that every
variant's best LR lies strictly inside the grid (bench/results/study_grid_2026-11-30.md): on the embedded
corpus with a constant LR after warmup, the best final validation loss is at 1e-3 (qknorm at 200 and 300
steps; baseline, olmo2, gemma3 at 300) or 3e-3 (postln), and 3e-4 is worse for every variant. The grids reach
3e-2 (quick) and 3e-1 (default) because the logit check compares baseline and qknorm at LR >= 3e-2. A grid
that does not bracket a variant's optimum on other data is reported as such (curve.py); pass --lrs to widen it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from .variants import FAMILY_VARIANTS, VARIANTS

__all__ = ["Profile", "PROFILES", "WORTSMAN_GRID", "device_profile"]

WORTSMAN_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # Wortsman et al. 2023 (arXiv 2309.14322)


@dataclasses.dataclass(frozen=True)
class Profile:
    """A study size: model shape shared by every variant, training settings, the grid and the defaults."""

    shape: Mapping[str, Any]
    variants: Tuple[str, ...]
    lrs: Tuple[float, ...]
    seeds: int
    steps: int
    warmup_frac: float  # warmup steps = round(warmup_frac * steps)
    schedule: str  # "cosine" (warmup, cosine to final_lr) or "constant" (warmup, then the peak LR)
    batch_size: int
    seq_len: int
    dtype: str = "fp32"
    stats_every: int = 10
    eval_batches: int = 8
    workers: int = 2
    device: str = "cpu"
    description: str = ""
    optimizers: Tuple[str, ...] = ("adamw",)


_ALL = FAMILY_VARIANTS
_STAB_GRID = WORTSMAN_GRID[:5]
_CPU_SHAPE = dict(d_model=128, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=64, d_ff=512)
_GPU_SHAPE = dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=1024)

PROFILES: Dict[str, Profile] = {
    "quick": Profile(shape=_CPU_SHAPE, variants=("baseline", "qknorm"), lrs=WORTSMAN_GRID[:5], seeds=1, steps=200,
                     warmup_frac=0.1, schedule="constant", batch_size=16, seq_len=64,
                     description="first look: baseline vs qknorm, 5 LRs 3e-4..3e-2, 200 steps"),
    "default": Profile(shape=_CPU_SHAPE, variants=_ALL, lrs=WORTSMAN_GRID, seeds=1, steps=300, warmup_frac=0.1,
                       schedule="constant", batch_size=16, seq_len=64,
                       description="all five variants, 7 LRs 3e-4..3e-1, 300 steps"),
    "gpu": Profile(shape=_GPU_SHAPE, variants=_ALL, lrs=WORTSMAN_GRID, seeds=1, steps=1200, warmup_frac=0.05,
                   schedule="cosine", batch_size=64, seq_len=256, dtype="bf16", stats_every=25, workers=8,
                   device="cuda", description="all five variants, 7 LRs 3e-4..3e-1, 2x the CPU model's width and "
                   "depth, bf16, 1200 steps, 8 runs at once on one GPU"),
    "stabilizers": Profile(
        shape=_CPU_SHAPE, variants=tuple(VARIANTS), optimizers=("adamw", "muon"), lrs=_STAB_GRID, seeds=2, steps=150,
        warmup_frac=0.1, schedule="constant", batch_size=16, seq_len=64,
        description="every stabilizer and family variant x AdamW and Muon, 5 LRs 3e-4..3e-2, 2 seeds, 150 steps, "
        "the default profile's model (240 runs)"),
    "stabilizers_gpu": Profile(
        shape=_GPU_SHAPE, variants=tuple(VARIANTS), optimizers=("adamw", "muon"), lrs=WORTSMAN_GRID[:6], seeds=2,
        steps=250, warmup_frac=0.05, schedule="cosine", batch_size=64, seq_len=256, dtype="bf16", stats_every=25,
        workers=8, device="cuda",
        description="every stabilizer and family variant x AdamW and Muon, 6 LRs 3e-4..1e-1, 2 seeds, the gpu "
        "profile's model and batch, bf16, cosine, 250 steps, 8 runs at once"),
    "smoke": Profile(shape=dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=32, d_ff=128),
                     variants=_ALL, lrs=(1e-3, 1e-1), seeds=1, steps=6, warmup_frac=0.34, schedule="cosine",
                     batch_size=4, seq_len=32, dtype="bf16", stats_every=2, eval_batches=1, workers=2,
                     description="the gpu profile's code path at a tiny size, 6 steps (tests, dry runs; measures "
                     "nothing)"),
}
_GPU_TWINS = {"stabilizers": "stabilizers_gpu"}


def device_profile(profile: str, device: Optional[str]) -> str:
    """The profile to run for `profile` on `device`: a CPU profile with a GPU twin becomes the twin on CUDA
    (`stabilizers` -> `stabilizers_gpu`); every other profile is itself on any device."""
    if device is not None and device.startswith("cuda"):
        return _GPU_TWINS.get(profile, profile)
    return profile
