"""What a study's runs say, computed once for the summary, the printed table and the report.

Everything is per *arm*, a (variant, optimizer) pair, keyed by its label (records.arm_label: the variant's name
for AdamW, "variant/optimizer" else), so an AdamW-only study reads as before.

* LR sensitivity per arm (Wortsman et al. 2023, arXiv 2309.14322): E_lr[min(l(lr), l0) - l*] on each run's
  `RunRecord.sens_loss`, per seed; the value is the mean over seeds, with the min and max over seeds beside it;
  l0 = the variant's mean initial loss. A run that diverged (metrics.judge_divergence: non-finite or exploding) counts
  as l0. A seed whose grid has a point with no measured run (failed: it raised or its worker died; cut or
  skipped by the time budget; absent) has no value: counting a run that measured nothing as l0 would make the
  variant look LR-sensitive; those grid points are listed as `incomplete` with the reason.
* Per variant the loss-vs-LR curve over seeds and its optimum, inside the grid or at an edge (curve.py).
* The leaderboard (leaderboard.py): per arm the best loss, LR sensitivity, logit, entropy, log Z drift, spike
  score and step-time overhead, with 95% CIs over seeds.
* The study's two checks, on measured numbers of `baseline` and `qknorm` (their AdamW arms):
  max_logit_ratio: at every grid LR >= 3e-2, (smallest baseline max attention logit over seeds) / (largest
  qknorm one) — conservative over seeds; passes when the ratio is >= 10 at some LR >= 3e-2.
  lr_sensitivity_ratio: qknorm's LR sensitivity / baseline's; passes when <= 0.6.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from ..metrics import lr_sensitivity
from .curve import LRPoint, Optimum, loss_curve, optimum, spread
from .leaderboard import Arm, LeaderboardRow, leaderboard
from .records import DEFAULT_OPTIMIZER, RunRecord, arm_label, json_num, num_from_json

__all__ = ["Sensitivity", "Check", "StudyAnalysis", "analyze", "logit_at", "json_num", "CHECK_LR_MIN",
           "LOGIT_RATIO_MIN", "SENSITIVITY_RATIO_MAX"]

CHECK_LR_MIN = 3e-2  # the logit check compares baseline and qknorm at peak LRs >= this
LOGIT_RATIO_MIN = 10.0  # baseline max logit / qknorm max logit must be at least this
SENSITIVITY_RATIO_MAX = 0.6  # qknorm LR sensitivity / baseline LR sensitivity must be at most this


def _mean(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """One variant's LR sensitivity (mean over seeds, each seed's value, their min and max), l0, its loss-vs-LR
    curve and optimum, and the grid points left out (seed, lr, why)."""

    value: Optional[float]
    per_seed: Dict[int, float]
    init_loss: float
    optimum: Optimum = Optimum(None, None, None)
    curve: Tuple[LRPoint, ...] = ()
    incomplete: Tuple[Tuple[int, float, str], ...] = ()  # (seed, lr, "failed" | "cut" | "missing")

    @property
    def best_loss(self) -> Optional[float]:
        return self.optimum.best_loss

    @property
    def lo(self) -> Optional[float]:
        return spread(list(self.per_seed.values()))[1]

    @property
    def hi(self) -> Optional[float]:
        return spread(list(self.per_seed.values()))[2]

    def to_json(self) -> Dict[str, Any]:
        return {"value": self.value, "per_seed": {str(k): v for k, v in self.per_seed.items()},
                "min_over_seeds": self.lo, "max_over_seeds": self.hi, "n_seeds": len(self.per_seed),
                "init_loss": self.init_loss, "best_loss": self.best_loss, **self.optimum.to_json(),
                "loss_by_lr": [p.to_json() for p in self.curve],
                "incomplete": [{"seed": s, "lr": lr, "status": why} for s, lr, why in self.incomplete]}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Sensitivity":
        return cls(value=d.get("value"), per_seed={int(k): v for k, v in (d.get("per_seed") or {}).items()},
                   init_loss=d.get("init_loss"), optimum=Optimum.from_json(d),
                   curve=tuple(LRPoint.from_json(p) for p in d.get("loss_by_lr") or ()),
                   incomplete=tuple((p["seed"], p["lr"], p.get("status", "missing"))
                                    for p in d.get("incomplete") or ()))


@dataclasses.dataclass(frozen=True)
class Check:
    """A pass/fail statement about measured numbers; `passed` None = not evaluated (`note` says why)."""

    description: str
    threshold: float
    passed: Optional[bool] = None
    value: Any = None  # a float, or "inf"
    note: str = ""
    lr: Optional[float] = None  # max_logit_ratio: the LR where the ratio is largest
    per_lr: Tuple[Dict[str, Any], ...] = ()  # max_logit_ratio: {lr, baseline, qknorm, ratio} per LR
    baseline: Optional[float] = None  # lr_sensitivity_ratio: the two sensitivities
    qknorm: Optional[float] = None

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["per_lr"] = list(self.per_lr)
        if not self.note:
            out.pop("note")
        return out

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Check":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{**d, "per_lr": tuple(d.get("per_lr") or ())})


@dataclasses.dataclass(frozen=True)
class StudyAnalysis:
    lr_sensitivity: Dict[str, Sensitivity]  # keyed by arm label
    checks: Dict[str, Check]
    leaderboard: Tuple[LeaderboardRow, ...] = ()

    def to_json(self) -> Dict[str, Any]:
        return {"lr_sensitivity": {v: s.value for v, s in self.lr_sensitivity.items()},
                "optimum": {v: s.optimum.to_json() for v, s in self.lr_sensitivity.items()},
                "lr_sensitivity_detail": {v: s.to_json() for v, s in self.lr_sensitivity.items()},
                "leaderboard": [row.to_json() for row in self.leaderboard],
                "checks": {k: c.to_json() for k, c in self.checks.items()}}

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "StudyAnalysis":
        detail = d.get("lr_sensitivity_detail") or {}
        sens = {v: Sensitivity.from_json(detail.get(v) or {"value": x}) for v, x in d.get("lr_sensitivity", {}).items()}
        return cls(lr_sensitivity=sens, checks={k: Check.from_json(c) for k, c in d.get("checks", {}).items()},
                   leaderboard=tuple(LeaderboardRow.from_json(r) for r in d.get("leaderboard") or ()))


def lr_sensitivities(runs: Sequence[RunRecord], arms: Sequence[Arm], lrs: Sequence[float],
                     seeds: Sequence[int], vocab_size: int) -> Dict[str, Sensitivity]:
    """Per arm (keyed by its label): Wortsman's LR sensitivity per seed and over seeds, the loss curve and its
    optimum (see the module docstring)."""
    out = {}
    for variant, opt in arms:
        v = arm_label(variant, opt)
        vr = [r for r in runs if r.label == v]
        l0 = _mean([r.init_loss for r in vr]) or math.log(vocab_size)
        per_seed, incomplete = {}, []
        for s in seeds:
            at = {r.lr: r for r in vr if r.seed == s}
            left_out = [(s, lr, at[lr].status.value if lr in at else "missing") for lr in lrs
                        if lr not in at or not at[lr].status.measured]
            if left_out:
                incomplete += left_out
                continue
            per_seed[s] = lr_sensitivity({lr: at[lr].sens_loss for lr in lrs}, l0)
        curve = loss_curve(vr, lrs, l0)
        out[v] = Sensitivity(value=_mean(list(per_seed.values())), per_seed=per_seed, init_loss=l0,
                             optimum=optimum(curve), curve=tuple(curve), incomplete=tuple(incomplete))
    return out


def logit_at(runs: Sequence[RunRecord], label: str, lr: float, pick: Callable) -> Optional[float]:
    """`pick` (min or max) over seeds of the arm `label`'s max attention logit at `lr` (+inf if non-finite), from
    runs that trained to their end (a cut or failed run's partial maximum is not the run's)."""
    vals = [r.logit for r in runs if r.label == label and r.lr == lr and r.logit is not None
            and r.status.measured]
    return pick(vals) if vals else None


def _logit_ratio_check(runs: Sequence[RunRecord], lrs: Sequence[float]) -> Check:
    description = f"baseline max attention logit >= {LOGIT_RATIO_MIN:g}x qknorm's at a peak LR >= {CHECK_LR_MIN:g}"
    have = {r.label for r in runs}
    top = [lr for lr in lrs if lr >= CHECK_LR_MIN * (1 - 1e-9)]
    if not {"baseline", "qknorm"} <= have or not top:
        return Check(description, LOGIT_RATIO_MIN,
                     note="not evaluated: needs the baseline and qknorm variants and a grid LR >= 3e-2")
    scored, per_lr = [], []
    for lr in top:
        b = logit_at(runs, "baseline", lr, min)
        q = logit_at(runs, "qknorm", lr, max)
        ratio = b / q if b is not None and q else None
        per_lr.append({"lr": lr, "baseline": json_num(b), "qknorm": json_num(q), "ratio": json_num(ratio)})
        if ratio is not None and not math.isnan(ratio):
            scored.append((ratio, lr))
    if not scored:
        return Check(description, LOGIT_RATIO_MIN, per_lr=tuple(per_lr),
                     note="not evaluated: no finite max attention logit at LR >= 3e-2")
    ratio, lr = max(scored)
    return Check(description, LOGIT_RATIO_MIN, passed=ratio >= LOGIT_RATIO_MIN, value=json_num(ratio), lr=lr,
                 per_lr=tuple(per_lr))


def _sensitivity_ratio_check(sens: Dict[str, Sensitivity]) -> Check:
    description = f"qknorm LR sensitivity <= {SENSITIVITY_RATIO_MAX:g}x baseline's"
    sb = sens["baseline"].value if "baseline" in sens else None
    sq = sens["qknorm"].value if "qknorm" in sens else None
    if sb is None or sq is None:
        return Check(description, SENSITIVITY_RATIO_MAX, baseline=sb, qknorm=sq,
                     note="not evaluated: needs finished baseline and qknorm runs")
    if sb <= 0:
        return Check(description, SENSITIVITY_RATIO_MAX, baseline=sb, qknorm=sq,
                     note="not evaluated: the baseline's LR sensitivity is 0 (a flat grid), the ratio is undefined")
    edge = [v for v in ("baseline", "qknorm") if sens[v].optimum.inside is not True]
    note = (f"the grid does not bracket the optimum of {' and '.join(edge)}: the sensitivities depend on where "
            "the grid starts" if edge else "")
    return Check(description, SENSITIVITY_RATIO_MAX, passed=sq / sb <= SENSITIVITY_RATIO_MAX, value=sq / sb,
                 baseline=sb, qknorm=sq, note=note)


def analyze(runs: Sequence[RunRecord], variants: Sequence[str], lrs: Sequence[float], seeds: Sequence[int],
            vocab_size: int, optimizers: Sequence[str] = (DEFAULT_OPTIMIZER,),
            softcaps: Optional[Mapping[str, Optional[float]]] = None) -> StudyAnalysis:
    """LR sensitivity per arm (variant x optimizer), the leaderboard and the checks, from run records.
    `softcaps`: each variant's attention soft-cap, if any (the leaderboard notes it beside the logits)."""
    arms = [(v, o) for o in optimizers for v in variants]
    sens = lr_sensitivities(runs, arms, lrs, seeds, vocab_size)
    board = leaderboard(runs, arms, lrs, {k: s.init_loss for k, s in sens.items()},
                        {k: s.optimum for k, s in sens.items()}, {k: s.per_seed for k, s in sens.items()},
                        {k: bool(s.incomplete) for k, s in sens.items()}, softcaps)
    return StudyAnalysis(lr_sensitivity=sens, leaderboard=board,
                         checks={"max_logit_ratio": _logit_ratio_check(runs, lrs),
                                 "lr_sensitivity_ratio": _sensitivity_ratio_check(sens)})


def check_logit_pair(check: Check) -> Optional[Dict[str, Any]]:
    """The per-LR entry of a max_logit_ratio check at its chosen LR (for the table and the report)."""
    return next((p for p in check.per_lr if p["lr"] == check.lr), None)


def check_value(x: Any) -> Optional[float]:
    return num_from_json(x)
