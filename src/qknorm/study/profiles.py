"""Study profiles: a model shape shared by every variant, training settings, the LR grid and defaults.

  quick    first look: baseline vs qknorm, 5 LRs 3e-4..3e-2, 200 steps
  default  all five variants, Wortsman et al.'s 7 LRs 3e-4..3e-1, 300 steps
  gpu      all five variants, the same 7 LRs, a bigger model, bf16, cosine, 1200 steps, 8 runs at once
  stabilizers      all thirteen variants x AdamW and Muon, 5 LRs 3e-4..3e-2, 2 seeds, 150 steps, the default
                   profile's model: 260 runs; every arm's best LR was inside the grid (1e-3..1e-2;
                   bench/results/stabilizers_study_cpu_2026-11-30.md, run before clip_qkv joined: 12 variants)
  stabilizers_gpu  its twin for `--device cuda` (the gpu profile's model, bf16, 250 steps)
  smoke    the gpu profile's code path at a tiny size and 6 steps (tests, dry runs): not a measurement
  scaling      the same study at three model sizes (scaling_plan.py): baseline vs qknorm, Wortsman et al.'s 7 LRs
               3e-4..3e-1 at every size, 2 seeds, 150 steps, d_model 32 / 64 / 128 with 2 / 3 / 4 layers
               (head_dim 32 at every size, heads grow; d_ff 4 d_model: 33k / 197k / 1.05M non-embedding parameters,
               32x), the same tokens for every size (Wortsman et al. also hold the step count fixed); 84 runs
  scaling_gpu  its twin for `--device cuda`: d_model 256 / 512 / 768 with 4 / 8 / 12 layers (4.2M / 33.6M /
               113M non-embedding parameters, 27x), bf16, cosine, 1000 steps of 64 x 256 tokens (not yet run)
  scaling_smoke  the scaling code path at three tiny sizes, 3 steps (tests, dry runs): not a measurement

The scaling grid. One grid for every size, so that LR sensitivity (a mean over the grid) compares sizes on the
same LRs. The optimum moves to lower LRs as the model grows (Wortsman et al. Fig. 1); Wortsman's 3e-4..3e-1
brackets it at all three CPU sizes, measured: best LR 3e-3 at d32_l2 and d64_l3, 1e-3 at d128_l4, for both
variants (bench/results/scaling_study_cpu_2026-12-07.md, a partial run: d128_l4 seed 0 only), so no size's grid
was widened. A size may carry its own grid
(`ModelSize.lrs`, widened where its optimum moves off the common one); the report marks every size whose optimum
sits at a grid edge.

How long a profile takes depends on the machine (a CPU without fast bf16, another core count): no profile
carries a minute count measured elsewhere. `qknorm study` measures this machine before its first run (a matmul
probe and a few steps of every variant and optimizer, study/estimate.py) and prints its own estimate.

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

__all__ = ["Profile", "PROFILES", "WORTSMAN_GRID", "device_profile", "ModelSize"]

WORTSMAN_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # Wortsman et al. 2023 (arXiv 2309.14322)


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """One model size of a scaling profile: its name, its shape (ModelConfig fields) and, where its optimum moves
    off the profile's grid, its own LR grid (None: the profile's)."""

    name: str
    shape: Mapping[str, Any]
    lrs: Optional[Tuple[float, ...]] = None


def _size(d_model: int, n_layers: int, head_dim: int) -> ModelSize:
    """A size with a fixed head_dim (Wortsman et al. keep it fixed and add heads) and d_ff = 4 d_model."""
    heads = d_model // head_dim
    return ModelSize(f"d{d_model}_l{n_layers}", dict(d_model=d_model, n_layers=n_layers, n_heads=heads,
                                                     n_kv_heads=heads, head_dim=head_dim, d_ff=4 * d_model))


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
    sizes: Tuple[ModelSize, ...] = ()  # a scaling profile: the study at each size (`shape` = the largest's)


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
        "the default profile's model (260 runs)"),
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
_SCALING_CPU = (_size(32, 2, 32), _size(64, 3, 32), _size(128, 4, 32))
_SCALING_GPU = (_size(256, 4, 64), _size(512, 8, 64), _size(768, 12, 64))
PROFILES["scaling"] = Profile(
    shape=_SCALING_CPU[-1].shape, sizes=_SCALING_CPU, variants=("baseline", "qknorm"), lrs=WORTSMAN_GRID, seeds=2,
    steps=150, warmup_frac=0.1, schedule="constant", batch_size=16, seq_len=64,
    description="baseline vs qknorm at 3 sizes (d_model 32/64/128, 2/3/4 layers: 33k-1.05M non-embedding "
    "parameters, 32x), 7 LRs 3e-4..3e-1, 2 seeds, 150 steps; LR sensitivity against size (Wortsman et al. Fig. 1); "
    "the time estimate is printed before it starts")
PROFILES["scaling_gpu"] = Profile(
    shape=_SCALING_GPU[-1].shape, sizes=_SCALING_GPU, variants=("baseline", "qknorm"), lrs=WORTSMAN_GRID, seeds=2,
    steps=1000, warmup_frac=0.05, schedule="cosine", batch_size=64, seq_len=256, dtype="bf16", stats_every=25,
    workers=4, device="cuda",
    description="baseline vs qknorm, the scaling profile's twin for --device cuda: d_model 256/512/768, 4/8/12 "
    "layers (4.2M-113M non-embedding parameters, 27x), 7 LRs 3e-4..3e-1, 2 seeds, bf16, cosine, 1000 steps of "
    "64 x 256 tokens, 4 runs at once (not yet run in full)")
PROFILES["scaling_smoke"] = Profile(
    shape=dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=128),
    sizes=tuple(ModelSize(f"d{d}_l{n}", dict(d_model=d, n_layers=n, n_heads=d // 16, n_kv_heads=d // 16,
                                             head_dim=16, d_ff=2 * d)) for d, n in ((16, 1), (32, 2), (64, 2))),
    variants=("baseline", "qknorm"), lrs=(1e-3, 1e-2, 1e-1), seeds=2, steps=3, warmup_frac=0.34,
    schedule="constant", batch_size=2, seq_len=16, stats_every=1, eval_batches=1, workers=1,
    description="the scaling profile's code path at three tiny sizes and 3 steps (tests, dry runs; measures "
    "nothing)")
_GPU_TWINS = {"stabilizers": "stabilizers_gpu", "scaling": "scaling_gpu"}


def device_profile(profile: str, device: Optional[str]) -> str:
    """The profile to run for `profile` on `device`: a CPU profile with a GPU twin becomes the twin on CUDA
    (`stabilizers` -> `stabilizers_gpu`, `scaling` -> `scaling_gpu`); every other profile is itself on any
    device."""
    if device is not None and device.startswith("cuda"):
        return _GPU_TWINS.get(profile, profile)
    return profile
