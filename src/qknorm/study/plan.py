"""The plan of a study: which variants, optimizers, LRs and seeds, at which model shape and training settings
(`StudyPlan`), and the runs it expands to (`RunSpec`s): every variant x optimizer x LR x seed.

    plan = make_plan("default", variants=("baseline", "qknorm"), lrs=(1e-3, 1e-2))
    plan = make_plan("stabilizers", optimizers=("adamw", "muon"))
    specs = run_specs(plan, vocab_size=256)

A run's TrainConfig is the plan's template with the run's peak LR, seed and optimizer, plus the training
settings its variant switches on (variants.py: qk_clip, z_loss); the run's stored spec (records.py
`RunSpec.identity`) holds all of them, so a study is resumed only from runs trained with the same ones.

Errors name the plan's fields (variants, optimizers, lrs, seeds, seed, steps, workers, profile); the command line
maps them to its flags.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..train.config import OptimizerName, TrainConfig
from .profiles import PROFILES
from .records import DEFAULT_OPTIMIZER, RunSpec, trajectory_settings
from .variants import VARIANTS, model_config

__all__ = ["StudyPlan", "make_plan", "parse_variants", "parse_optimizers", "parse_lrs", "run_specs",
           "plan_fingerprint", "plan_label", "OPTIMIZERS"]

OPTIMIZERS = tuple(o.value for o in OptimizerName)


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """The full description of a study: what `run_study` runs and what identifies its results.

    `train` is the template of every run's TrainConfig; each run replaces its peak `lr` and `seed` (and, on a
    constant schedule, `final_lr = lr`)."""

    profile: str
    variants: Tuple[str, ...]
    lrs: Tuple[float, ...]
    seeds: Tuple[int, ...]
    shape: Mapping[str, Any]
    schedule: str  # "constant" or "cosine"
    train: TrainConfig
    data: Optional[str] = None
    tokenizer: Optional[str] = None
    workers: int = 1
    optimizers: Tuple[str, ...] = (DEFAULT_OPTIMIZER,)

    def train_config(self, lr: float, seed: int, variant: Optional[str] = None,
                     optimizer: str = DEFAULT_OPTIMIZER) -> TrainConfig:
        """The TrainConfig of the run (variant, optimizer, lr, seed); without a variant, the template's."""
        final = lr if self.schedule == "constant" else self.train.final_lr
        cfg = self.train.replace(lr=lr, seed=seed, final_lr=final, progress=False, optimizer=optimizer)
        return VARIANTS[variant].train.apply(cfg) if variant is not None else cfg

    def to_json(self) -> Dict[str, Any]:
        """The plan as plan.json holds it. An AdamW-only plan is written without "optimizers", as before the
        study crossed optimizers, so that its fingerprint (and a study directory written then) stays valid."""
        out = {"profile": self.profile, "variants": list(self.variants), "lrs": list(self.lrs),
               "seeds": list(self.seeds), "shape": dict(self.shape), "schedule": self.schedule,
               "train": trajectory_settings(self.train), "data": self.data, "tokenizer": self.tokenizer,
               "workers": self.workers}
        if self.optimizers != (DEFAULT_OPTIMIZER,):
            out["optimizers"] = list(self.optimizers)
        return out


def plan_fingerprint(plan: StudyPlan) -> str:
    """What identifies a study's results: everything in the plan except how many workers ran it."""
    ident = {k: v for k, v in plan.to_json().items() if k != "workers"}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def parse_variants(text: str) -> Tuple[str, ...]:
    """A comma-separated list of variant names, each known and named once."""
    return _parse_names(text, field="variants", noun="variant", article="a", known=VARIANTS)


def parse_optimizers(text: str) -> Tuple[str, ...]:
    """A comma-separated list of optimizer names, each known and named once."""
    return _parse_names(text, field="optimizers", noun="optimizer", article="an", known=OPTIMIZERS)


def _parse_names(text: str, *, field: str, noun: str, article: str, known) -> Tuple[str, ...]:
    """The names in a comma-separated `text`, each one of `known` and named once; else a ConfigError naming
    `field`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if not names or bad:
        shown = repr(bad[0]) if bad else repr(text)
        raise ConfigError(f"{field}: unknown {noun} {shown}; choose from: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{field}: {text!r} names {article} {noun} twice")
    return names


def parse_lrs(text: str) -> Tuple[float, ...]:
    """A comma-separated list of distinct peak learning rates in (0, 10), sorted."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            lr = float(item)
        except ValueError:
            lr = math.nan
        if not (math.isfinite(lr) and 0 < lr < 10):
            raise ConfigError(f"lrs: {item!r} is not a learning rate; give comma-separated numbers in (0, 10), "
                              "e.g. 1e-3,3e-2")
        out.append(lr)
    if len(set(out)) != len(out):
        raise ConfigError(f"lrs: {text!r} repeats a learning rate")
    return tuple(sorted(out))


def make_plan(profile: str = "default", *, variants: Optional[Sequence[str]] = None,
              lrs: Optional[Sequence[float]] = None, seeds: Optional[int] = None, seed: int = 0,
              steps: Optional[int] = None, device: Optional[str] = None, data: Optional[str] = None,
              tokenizer: Optional[str] = None, workers: Optional[int] = None,
              optimizers: Optional[Sequence[str]] = None, compile: bool = False) -> StudyPlan:
    """The plan of `profile` with any of its defaults replaced. `compile`: every run torch.compiles its training
    forward (train/compiled.py; the runs' numbers agree with eager ones to 1e-5, so it is not part of the plan's
    fingerprint)."""
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; choose from: {', '.join(PROFILES)}")
    p = PROFILES[profile]
    variants = tuple(variants) if variants is not None else p.variants
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"variants: unknown variant {v!r}; choose from: {', '.join(VARIANTS)}")
    optimizers = tuple(optimizers) if optimizers is not None else p.optimizers
    if not optimizers or any(o not in OPTIMIZERS for o in optimizers) or len(set(optimizers)) != len(optimizers):
        raise ConfigError(f"optimizers={optimizers!r}: give distinct names from: {', '.join(OPTIMIZERS)}")
    lrs = tuple(sorted(lrs)) if lrs is not None else p.lrs
    if not lrs:
        raise ConfigError("lrs: give at least one learning rate, e.g. 1e-3,3e-2")
    for name, value, lo in (("seeds", seeds, 1), ("seed", seed, 0), ("steps", steps, 1), ("workers", workers, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
            raise ConfigError(f"{name}={value!r} must be an integer >= {lo}")
    steps = steps or p.steps
    warmup = min(steps - 1, max(1, round(p.warmup_frac * steps))) if steps > 1 else 0
    top = max(lrs)
    train = TrainConfig(steps=steps, warmup_steps=warmup, batch_size=p.batch_size, seq_len=p.seq_len, lr=top,
                        final_lr=top if p.schedule == "constant" else 1e-5, weight_decay=0.0, beta1=0.9,
                        beta2=0.95, adam_eps=1e-8, clip=1.0, z_loss=0.0, dtype=p.dtype, stats_every=p.stats_every,
                        eval_batches=p.eval_batches, eval_every=0, on_nan="stop", device=device or p.device,
                        progress=False, compile=compile)
    return StudyPlan(profile=profile, variants=variants, lrs=lrs, seeds=tuple(seed + i for i in range(seeds or p.seeds)),
                     shape=dict(p.shape), schedule=p.schedule, train=train, data=data, tokenizer=tokenizer,
                     workers=workers or p.workers, optimizers=optimizers)


def plan_label(plan: StudyPlan) -> str:
    """What a printed label may call the plan: "quick profile", or "default profile, custom LRs, steps" when
    settings that change the results differ from the profile's."""
    base = make_plan(plan.profile)
    changed = [name for name, differs in (
        ("variants", plan.variants != base.variants), ("optimizers", plan.optimizers != base.optimizers),
        ("LRs", plan.lrs != base.lrs),
        ("seeds", plan.seeds != base.seeds), ("steps", plan.train.steps != base.train.steps),
        ("device", plan.train.device != base.train.device),
        ("data", plan.data is not None or plan.tokenizer is not None)) if differs]
    return f"{plan.profile} profile" + (f", custom {', '.join(changed)}" if changed else "")


def run_specs(plan: StudyPlan, vocab_size: int, data_fingerprint: Optional[str] = None) -> List[RunSpec]:
    """One spec a run. Order: baseline and qknorm first (the checks need them), then seed, LR (high LRs
    first: they are the interesting ones), optimizer, variant."""
    first = [v for v in plan.variants if v in ("baseline", "qknorm")]
    rest = [v for v in plan.variants if v not in first]
    models = {v: model_config(v, plan.shape, vocab_size) for v in plan.variants}
    specs = []
    for group in (first, rest):
        for seed in plan.seeds:
            for lr in sorted(plan.lrs, reverse=True):
                for opt in plan.optimizers:
                    for variant in group:
                        specs.append(RunSpec(variant=variant, lr=lr, seed=seed, model=models[variant],
                                             train=plan.train_config(lr, seed, variant, opt), data=plan.data,
                                             tokenizer=plan.tokenizer, data_fingerprint=data_fingerprint))
    return specs


def describe_models(plan: StudyPlan, vocab_size: int) -> Dict[str, Dict[str, Any]]:
    """Each variant's model config as JSON (for summary.json)."""
    return {v: model_config(v, plan.shape, vocab_size).to_dict() for v in plan.variants}


def describe_training(plan: StudyPlan) -> Dict[str, Dict[str, Any]]:
    """The training settings each variant switches on, as JSON (for summary.json; {} for most variants)."""
    return {v: VARIANTS[v].train.to_json() for v in plan.variants}
