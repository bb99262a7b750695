"""The leaderboard: one row per arm (variant, optimizer) with the numbers that compare stabilizers, each with its
uncertainty over seeds (95% t intervals, ci.py).

  best_val_loss        at the arm's best grid LR (curve.py: lowest mean clipped validation loss), the mean over
                       seeds of min(val loss, l0) (a diverged run counts as l0) and its 95% CI
  lr_sensitivity       Wortsman et al.'s LR sensitivity per seed (analysis.py), mean and 95% CI
  at the top grid LR, where a stabilizer has something to do:
    max_attn_logit_top_lr           the largest max attention logit over seeds (+ the smallest); before any
                                    softcap: with `attn_softcap` c the softmax saw at most c * tanh(m / c)
    attn_entropy_top_lr             mean attention entropy over layers at the last stats pass (nats), mean and CI;
                                    attn_entropy_min_layer_top_lr: the lowest layer's (entropy collapse)
    log_z_drift_top_lr              output log Z (mean logsumexp of the logits) at the end minus at step 0
    loss/grad_spike_score_top_lr    OLMo 2 spike score (window 100), mean over seeds
  step_time_ratio      the arm's step time against the baseline's with the same optimizer: ratio of the geometric
                       means over all the two arms' measured runs (every LR and seed), with Welch's 95% CI. CPU
                       runs use each run's median per-step process CPU time (robust to a machine shared with
                       other jobs), GPU runs the median wall time (`step_time_basis`).

Only runs that trained to their end (ok or diverged) count; failed, cut and refused runs measured nothing.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .ci import Interval, interval_from_json, mean_ci95, ratio_ci95
from .curve import Optimum
from .records import RunRecord, arm_label, json_num, num_from_json

__all__ = ["LeaderboardRow", "leaderboard", "Arm"]

Arm = Tuple[str, str]  # (variant, optimizer)


@dataclasses.dataclass(frozen=True)
class LeaderboardRow:
    """One arm's comparable numbers (module docstring). `status` is "ok", "refused" (every run refused: `note`)
    or "incomplete" (a seed misses a measured run at some grid point: its LR sensitivity is undefined, and the
    row's is over the other seeds, `note`)."""

    variant: str
    optimizer: str
    status: str = "ok"
    note: str = ""
    n_seeds: int = 0
    best_lr: Optional[float] = None
    optimum_inside_grid: Optional[bool] = None
    best_val_loss: Optional[float] = None
    best_val_loss_ci95: Optional[Interval] = None
    lr_sensitivity: Optional[float] = None
    lr_sensitivity_ci95: Optional[Interval] = None
    top_lr: Optional[float] = None
    max_attn_logit_top_lr: Optional[float] = None  # +inf: non-finite
    max_attn_logit_top_lr_min: Optional[float] = None
    attn_softcap: Optional[float] = None
    attn_entropy_top_lr: Optional[float] = None
    attn_entropy_top_lr_ci95: Optional[Interval] = None
    attn_entropy_min_layer_top_lr: Optional[float] = None
    log_z_drift_top_lr: Optional[float] = None
    log_z_drift_top_lr_ci95: Optional[Interval] = None
    loss_spike_score_top_lr: Optional[float] = None
    grad_spike_score_top_lr: Optional[float] = None
    diverged: int = 0
    runs: int = 0
    step_ms: Optional[float] = None  # geometric mean over the arm's measured runs
    step_time_basis: Optional[str] = None  # "cpu" or "wall"
    step_time_ratio: Optional[float] = None
    step_time_ratio_ci95: Optional[Interval] = None

    @property
    def label(self) -> str:
        return arm_label(self.variant, self.optimizer)

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        for k in ("max_attn_logit_top_lr", "max_attn_logit_top_lr_min"):
            out[k] = json_num(out[k])
        for k, v in out.items():
            if k.endswith("_ci95") and v is not None:
                out[k] = [v[0], v[1]]
        return out

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "LeaderboardRow":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in list(kw):
            if k.endswith("_ci95"):
                kw[k] = interval_from_json(kw[k])
            elif k.startswith("max_attn_logit"):
                kw[k] = num_from_json(kw[k])
        return cls(**kw)


def _step_samples(runs: Sequence[RunRecord]) -> Tuple[List[float], str]:
    """Per-run step times of measured runs: CPU ms when every run has it, else wall ms."""
    cpu = [r.step_cpu_ms for r in runs]
    if runs and all(x is not None for x in cpu):
        return [float(x) for x in cpu], "cpu"
    return [float(r.step_ms) for r in runs if r.step_ms is not None], "wall"


def _geo_mean(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def _row(arm: Arm, runs: Sequence[RunRecord], lrs: Sequence[float], l0: float, opt_point: Optimum,
         per_seed: Mapping[int, float], incomplete: bool, softcap: Optional[float],
         base: Tuple[List[float], str]) -> LeaderboardRow:
    variant, opt = arm
    measured = [r for r in runs if r.status.measured]
    refused = [r for r in runs if r.refused]
    if runs and len(refused) == len(runs):
        return LeaderboardRow(variant=variant, optimizer=opt, status="refused", note=refused[0].error or "",
                              runs=len(runs), attn_softcap=softcap)
    at_best = [l0 if r.diverged else min(r.sens_loss, l0) for r in measured if r.lr == opt_point.best_lr
               and (r.diverged or r.sens_loss is not None)]
    best, best_ci = mean_ci95(at_best)
    sens, sens_ci = mean_ci95(list(per_seed.values()))
    top = max(lrs)
    at_top = [r for r in measured if r.lr == top]
    logits = [r.logit for r in at_top if r.logit is not None]
    entropy, entropy_ci = mean_ci95([r.attn_entropy for r in at_top])
    drift, drift_ci = mean_ci95([r.log_z_drift for r in at_top])
    steps, basis = _step_samples(measured)
    if variant == "baseline":  # the reference of its optimizer
        ratio, ratio_ci = (1.0, None) if steps else (None, None)
    else:
        ratio, ratio_ci = ratio_ci95(steps, base[0]) if base[0] and basis == base[1] else (None, None)
    note = "; ".join(filter(None, [
        (f"LR sensitivity over {len(per_seed)} seed(s) only: the other seeds miss a grid point" if per_seed else
         "every seed misses a grid point: LR sensitivity undefined") if incomplete else "",
        f"{len(refused)} of {len(runs)} runs refused: {refused[0].error}" if refused else ""]))
    return LeaderboardRow(
        variant=variant, optimizer=opt, status="incomplete" if incomplete else "ok", note=note,
        n_seeds=len(at_best), best_lr=opt_point.best_lr, optimum_inside_grid=opt_point.inside,
        best_val_loss=best, best_val_loss_ci95=best_ci, lr_sensitivity=sens, lr_sensitivity_ci95=sens_ci,
        top_lr=top,
        max_attn_logit_top_lr=max(logits) if logits else None, max_attn_logit_top_lr_min=min(logits) if logits
        else None, attn_softcap=softcap, attn_entropy_top_lr=entropy, attn_entropy_top_lr_ci95=entropy_ci,
        attn_entropy_min_layer_top_lr=_mean([r.attn_entropy_min_layer for r in at_top]),
        log_z_drift_top_lr=drift, log_z_drift_top_lr_ci95=drift_ci,
        loss_spike_score_top_lr=_mean([r.spike_score.loss for r in at_top]),
        grad_spike_score_top_lr=_mean([r.spike_score.grad_norm for r in at_top]),
        diverged=sum(r.diverged for r in runs), runs=len(runs), step_ms=_geo_mean(steps),
        step_time_basis=basis if steps else None, step_time_ratio=ratio, step_time_ratio_ci95=ratio_ci)


def leaderboard(runs: Sequence[RunRecord], arms: Sequence[Arm], lrs: Sequence[float], l0s: Mapping[str, float],
                optima: Mapping[str, Optimum], per_seed: Mapping[str, Mapping[int, float]],
                incomplete: Mapping[str, bool],
                softcaps: Optional[Mapping[str, Optional[float]]] = None) -> Tuple[LeaderboardRow, ...]:
    """One row per arm, in `arms` order. `l0s`, `optima` (curve.py), `per_seed` (LR sensitivity per seed) and
    `incomplete` are keyed by arm label (analysis.py computes them); `softcaps` by variant."""
    by_label: Dict[str, List[RunRecord]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(r)
    rows = []
    for variant, opt in arms:
        label = arm_label(variant, opt)
        base_runs = [r for r in by_label.get(arm_label("baseline", opt), []) if r.status.measured]
        rows.append(_row((variant, opt), by_label.get(label, []), lrs, l0s[label], optima[label],
                         per_seed.get(label, {}), incomplete.get(label, False), (softcaps or {}).get(variant),
                         _step_samples(base_runs)))
    return tuple(rows)
