"""Study profiles: a model shape shared by every variant, training settings, the LR grid and defaults.

  quick    first look: baseline vs qknorm, 4 LRs, a 2-core CPU in ~2 minutes
  default  all five variants, 6 LRs, a 2-core CPU in ~8 minutes
  gpu      all five variants, Wortsman et al.'s 7-point grid, bigger model, bf16, cosine, 8 runs at once
  smoke    the gpu profile's code path at a size a CPU runs in seconds (tests, dry runs)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

from .variants import VARIANTS

__all__ = ["Profile", "PROFILES", "WORTSMAN_GRID"]

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


_ALL = tuple(VARIANTS)
_CPU_SHAPE = dict(d_model=128, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=64, d_ff=512)
_GPU_SHAPE = dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=1024)

PROFILES: Dict[str, Profile] = {
    "quick": Profile(shape=_CPU_SHAPE, variants=("baseline", "qknorm"), lrs=(3e-3, 1e-2, 3e-2, 1e-1),
                     seeds=1, steps=300, warmup_frac=0.1, schedule="constant", batch_size=16, seq_len=64,
                     description="first look: baseline vs qknorm, 4 LRs, 2-core CPU in ~2 minutes"),
    "default": Profile(shape=_CPU_SHAPE, variants=_ALL, lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1), seeds=1,
                       steps=300, warmup_frac=0.1, schedule="constant", batch_size=16, seq_len=64,
                       description="all five variants, 6 LRs, 2-core CPU in ~8 minutes"),
    "gpu": Profile(shape=_GPU_SHAPE, variants=_ALL, lrs=WORTSMAN_GRID, seeds=1, steps=1200, warmup_frac=0.05,
                   schedule="cosine", batch_size=64, seq_len=256, dtype="bf16", stats_every=25, workers=8,
                   device="cuda", description="all five variants, Wortsman's 7-point grid, ~5 minutes on one "
                   "H100/H200 (8 runs at once measured 2.4M tokens/s together on an H200)"),
    "smoke": Profile(shape=dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=32, d_ff=128),
                     variants=_ALL, lrs=(1e-3, 1e-1), seeds=1, steps=6, warmup_frac=0.34, schedule="cosine",
                     batch_size=4, seq_len=32, dtype="bf16", stats_every=2, eval_batches=1, workers=2,
                     description="the gpu profile's code path at a tiny size (tests, CPU dry runs)"),
}
