"""The plan of a scaling study: the same study (variants x LRs x seeds, plan.py) at each model size of a scaling
profile (profiles.py: `Profile.sizes`), and what it will cost.

    splan = make_scaling_plan("scaling")                 # 3 sizes x baseline, qknorm x 7 LRs x 2 seeds
    splan = make_scaling_plan("scaling", steps=5, lrs=(1e-3, 3e-2))
    for size, plan in splan.items(): ...                 # one StudyPlan a size (its shape, its grid)

Every size shares the profile's training settings, seeds and data; only the model shape (and, where a size
carries its own, the LR grid) differs. `--lrs` replaces every size's grid. Each size is an ordinary study in its
own directory (scaling_driver.py), so it resumes like one.

`estimate_scaling` is the whole study's wall-time estimate before it starts: each size's runs still to train,
estimated as a study estimates itself (speed.py: a few calibration steps of its first run, here), summed over
the sizes, which run one after the other.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from .plan import StudyPlan, make_plan
from .profiles import PROFILES, ModelSize
from .records import RunSpec
from .estimate import estimate_study
from .variants import model_config

__all__ = ["ScalingPlan", "make_scaling_plan", "is_scaling", "params_nonembed", "estimate_scaling",
           "scaling_fingerprint"]


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


def estimate_scaling(splan: ScalingPlan, todo: Mapping[str, Sequence[RunSpec]]) -> Tuple[float, str]:
    """(wall seconds on quiet cores, what it is) for the runs `todo` still has to train, by size name: each size
    estimated by speed.estimate_study (calibration steps of its first run, here), the sizes one after the other."""
    parts, total = [], 0.0
    for size, plan in splan.items():
        est = estimate_study(list(todo.get(size.name, ())), plan.workers)
        if est is not None:
            total += est.wall_s
            step_ms = 1e3 * min(est.step_s.values())
            parts.append(f"{size.name} {est.runs} runs ~{est.wall_s / 60:.1f} min, a step {step_ms:.0f} ms")
    if not parts:
        return total, "nothing to train"
    return total, "; ".join(parts) + " (measured here before the first run; quiet cores)"
