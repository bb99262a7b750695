"""One variant's final loss against the peak learning rate, over seeds: the points, their spread, and whether the
grid brackets the optimum.

Each run contributes Wortsman et al.'s clipped loss (arXiv 2309.14322): min(loss, l0) for a run that finished
(`ok`), l0 for a measured divergence; failed and cut runs measured nothing and contribute nothing (they are
counted on the point). A point's `mean`, `lo`, `hi` are the mean, min and max of those losses over the seeds
that have one.

The optimum is the grid LR with the lowest mean. It is *inside* the grid when it is neither the lowest nor the
highest grid LR and both neighbouring grid LRs were measured; at an edge the grid does not show where the loss
turns up again, so the best LR (and the LR sensitivity, which depends on where the grid starts) is not the
variant's optimum: the summary, the table and the report say so.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .records import RunRecord, RunStatus

__all__ = ["LRPoint", "Optimum", "loss_curve", "optimum", "spread"]


def spread(xs: Sequence[float]) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """(mean, min, max) of `xs`; (None, None, None) when empty."""
    if not xs:
        return None, None, None
    return sum(xs) / len(xs), min(xs), max(xs)


@dataclasses.dataclass(frozen=True)
class LRPoint:
    """A variant's clipped final loss at one grid LR, over seeds (module docstring)."""

    lr: float
    n: int = 0  # seeds with a measured run (ok or diverged)
    mean: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    diverged: int = 0
    failed: int = 0
    cut: int = 0

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "LRPoint":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass(frozen=True)
class Optimum:
    """The best grid LR of a variant and whether the grid brackets it (`inside` None: cannot tell, `note`)."""

    best_lr: Optional[float]
    best_loss: Optional[float]
    inside: Optional[bool]
    note: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {"best_lr": self.best_lr, "best_loss": self.best_loss, "optimum_inside_grid": self.inside,
                "note": self.note}

    @classmethod
    def from_json(cls, d: Optional[Dict[str, Any]]) -> "Optimum":
        d = d or {}
        return cls(best_lr=d.get("best_lr"), best_loss=d.get("best_loss"), inside=d.get("optimum_inside_grid"),
                   note=d.get("note", ""))


def loss_curve(runs: Sequence[RunRecord], lrs: Sequence[float], l0: float) -> List[LRPoint]:
    """One point per grid LR from one variant's `runs` (every seed)."""
    points = []
    for lr in sorted(lrs):
        at = [r for r in runs if r.lr == lr]
        losses = [l0 if r.diverged else min(r.sens_loss, l0) for r in at
                  if r.diverged or (r.status is RunStatus.OK and r.sens_loss is not None)]
        mean, lo, hi = spread(losses)
        points.append(LRPoint(lr=lr, n=len(losses), mean=mean, lo=lo, hi=hi, diverged=sum(r.diverged for r in at),
                              failed=sum(r.failed for r in at), cut=sum(r.cut for r in at)))
    return points


def optimum(points: Sequence[LRPoint]) -> Optimum:
    """The best measured point and whether its neighbours on the grid were measured too."""
    measured = [p for p in points if p.n]
    if not measured:
        return Optimum(None, None, None, "no finished run")
    best = min(measured, key=lambda p: (p.mean, p.lr))
    i = [p.lr for p in points].index(best.lr)
    if len(points) == 1:
        return Optimum(best.lr, best.mean, False, "a one-LR grid cannot bracket the optimum")
    if i == 0 or i == len(points) - 1:
        edge = "lowest" if i == 0 else "highest"
        return Optimum(best.lr, best.mean, False,
                       f"best at the {edge} grid LR: the optimum may lie {'below' if i == 0 else 'above'} the grid")
    if not (points[i - 1].n and points[i + 1].n):
        return Optimum(best.lr, best.mean, None, "a neighbouring grid LR has no finished run")
    return Optimum(best.lr, best.mean, True)
