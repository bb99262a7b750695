"""The plan of a scaling study: the same study (variants x LRs x seeds, plan.py) at each model size of a scaling
profile (profiles.py: `Profile.sizes`), and what it will cost.

    splan = make_scaling_plan("scaling")                 # 3 sizes x baseline, qknorm x 7 LRs x 2 seeds
    splan = make_scaling_plan("scaling", steps=5, lrs=(1e-3, 3e-2))
    for size, plan in splan.items(): ...                 # one StudyPlan a size (its shape, its grid)

Every size shares the profile's training settings, seeds and data; only the model shape (and, where a size
carries its own, the LR grid) differs. `--lrs` replaces every size's grid. Each size is an ordinary study in its
own directory (scaling_driver.py), so it resumes like one.

The time estimate (`estimate_seconds`) is the one place that predicts a study's cost before it starts: FLOPs of
every run (6 x parameters x tokens for the matmuls, plus attention) at a throughput measured on this project's
CPU machine (`CPU_GFLOPS`, one torch thread a run) or an assumed GPU throughput, over the workers. A general
speed probe may replace it; the scaling driver prints what it returns.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from .plan import StudyPlan, make_plan
from .profiles import PROFILES, ModelSize
from .variants import model_config

__all__ = ["ScalingPlan", "make_scaling_plan", "is_scaling", "params_nonembed", "estimate_seconds",
           "scaling_fingerprint", "CPU_GFLOPS", "GPU_TFLOPS"]

CPU_GFLOPS = 40.0  # fitted to the measured process CPU time a step of the scaling profile's runs (one torch thread):
CPU_STEP_OVERHEAD_S = 0.008  # d32_l2 15 ms, d64_l3 41 ms a step (2026-12-07); per step, whatever the size
GPU_TFLOPS = 100.0  # assumed bf16 throughput of one GPU, shared by its concurrent runs (not measured)


def is_scaling(profile: str) -> bool:
    """Whether `profile` is a scaling profile (it has model sizes)."""
    return profile in PROFILES and bool(PROFILES[profile].sizes)


@dataclasses.dataclass(frozen=True)
class ScalingPlan:
    """A scaling study: one StudyPlan a model size, in size order (smallest first)."""

    profile: str
    sizes: Tuple[ModelSize, ...]
    plans: Tuple[StudyPlan, ...]

    def items(self) -> Iterator[Tuple[ModelSize, StudyPlan]]:
        return iter(zip(self.sizes, self.plans))

    @property
    def first(self) -> StudyPlan:
        return self.plans[0]

    def to_json(self) -> Dict[str, Any]:
        return {"profile": self.profile, "sizes": [{"name": s.name, "plan": p.to_json()} for s, p in self.items()]}


def scaling_fingerprint(splan: ScalingPlan) -> str:
    """What identifies a scaling study's results: every size's plan except how many workers ran it."""
    ident = [{"name": s.name, "plan": {k: v for k, v in p.to_json().items() if k != "workers"}}
             for s, p in splan.items()]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def make_scaling_plan(profile: str = "scaling", *, lrs: Optional[Sequence[float]] = None,
                      sizes: Optional[Sequence[ModelSize]] = None, **kw: Any) -> ScalingPlan:
    """The plan of the scaling `profile` with any of make_plan's defaults replaced (`lrs` for every size);
    `sizes` replaces the profile's sizes."""
    if not is_scaling(profile):
        scaling = [k for k, p in PROFILES.items() if p.sizes]
        raise ConfigError(f"profile: {profile!r} is not a scaling profile; choose from: {', '.join(scaling)}")
    sizes = tuple(sizes) if sizes is not None else PROFILES[profile].sizes
    if len(sizes) < 2 or len({s.name for s in sizes}) != len(sizes):
        raise ConfigError("sizes: give at least two model sizes with distinct names")
    base = make_plan(profile, lrs=lrs, **kw)
    plans = tuple(dataclasses.replace(base, shape=dict(s.shape), lrs=tuple(sorted(s.lrs))
                                      if s.lrs is not None and lrs is None else base.lrs) for s in sizes)
    return ScalingPlan(profile=profile, sizes=sizes, plans=plans)


def params_nonembed(shape: Mapping[str, Any], vocab_size: int, variant: str = "baseline") -> int:
    """Parameters of `variant`'s model at `shape` without the token embedding and the output head (Kaplan et al.'s
    and Wortsman et al.'s count), from the model built on the meta device (nothing allocated)."""
    import torch

    from ..model import TransformerLM

    with torch.device("meta"):
        model = TransformerLM(model_config(variant, shape, vocab_size))
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("embed.", "lm_head.")))


def _flops_per_step(plan: StudyPlan, vocab_size: int) -> float:
    """Training FLOPs of one step: 6 x (non-embedding + head parameters) per token for the matmuls, plus
    attention's 12 x layers x seq_len x d_attn per token (forward and backward)."""
    s, t = plan.shape, plan.train
    d_attn = s.get("n_heads", 1) * s.get("head_dim", s["d_model"])
    per_token = 6 * (params_nonembed(s, vocab_size) + vocab_size * s["d_model"]) + 12 * s["n_layers"] * t.seq_len * d_attn
    return per_token * t.batch_size * t.seq_len


def estimate_seconds(splan: ScalingPlan, vocab_size: int) -> Tuple[float, str]:
    """(wall seconds on a quiet machine, how it was estimated) for the whole scaling study (module docstring)."""
    total, device = 0.0, splan.first.train.device
    for _, plan in splan.items():
        runs = len(plan.variants) * len(plan.optimizers) * len(plan.lrs) * len(plan.seeds)
        flops = _flops_per_step(plan, vocab_size)
        if device == "cpu":  # one thread a worker, the workers in parallel
            total += runs * plan.train.steps * (flops / (CPU_GFLOPS * 1e9) + CPU_STEP_OVERHEAD_S) / plan.workers
        else:  # the concurrent runs share one GPU's throughput
            total += runs * plan.train.steps * flops / (GPU_TFLOPS * 1e12)
    how = (f"FLOPs at {CPU_GFLOPS:g} GFLOP/s a worker (measured on this project's CPU machine) + "
           f"{CPU_STEP_OVERHEAD_S * 1e3:g} ms a step, on quiet cores" if device == "cpu" else
           f"FLOPs at an assumed {GPU_TFLOPS:g} TFLOP/s for the GPU (not measured)")
    return total, how
