"""What a scaling study says: per (variant, size) the numbers Wortsman et al. 2023 (arXiv 2309.14322) plot against
model size, and the fitted trend of LR sensitivity with size, with its interval.

  ScalingRow    one (variant, optimizer, size): non-embedding parameters, tokens seen, best grid LR and its val
                loss (95% CI over seeds), LR sensitivity (the per-size study's, analysis.py: Wortsman's
                E_lr[min(l(lr), l0) - l*] per seed, mean and 95% t CI), the max attention logit at the top LR
  ScalingFit    per arm: the least-squares slope of LR sensitivity against log10(non-embedding parameters) and
                its 95% interval (`slope_ci95`). What it samples: every seed's LR sensitivity at every size is one
                point (x = log10 params, y = that seed's sensitivity); the slope is the ordinary least-squares fit
                through all of them, its interval Student's t with n - 2 degrees of freedom on the slope's standard
                error (residual variance / Sxx). So the interval holds seed-to-seed noise at each size and the
                misfit of a straight line; with 3 sizes x 2 seeds, t(0.975, 4) = 2.78. No interval with fewer
                than 3 points or one size. Unit: change of LR sensitivity per 10x parameters.
  SlopeDifference  the first arm's slope minus the second's (baseline - qknorm), interval sqrt(se_a^2 + se_b^2)
                with the smaller of the two fits' degrees of freedom (conservative).

`trend_sentences` states a trend only where its interval excludes zero; otherwise it says the trend is not
resolved at these sizes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .ci import Interval, interval_from_json, t_quantile
from .leaderboard import LeaderboardRow
from .scaling_config import ScalingConfig
from .summary import StudySummary

__all__ = ["fmt_params", "ScalingSummary", "ScalingRow", "ScalingFit", "SlopeDifference", "ScalingAnalysis",
           "SizeResult", "scaling_analysis",
           "fit_slope", "trend_sentences", "FIT_METHOD"]

FIT_METHOD = ("slope of LR sensitivity against log10(non-embedding parameters): ordinary least squares through one "
              "point per (size, seed) (that seed's LR sensitivity at that size); 95% interval: Student's t with "
              "n - 2 degrees of freedom on the slope's standard error; unit: LR sensitivity per 10x parameters")


def fmt_params(n: int) -> str:
    """A parameter count as people write it: 2.6k, 786k, 2.36M, 113M."""
    if n >= 1e8:
        return f"{n / 1e6:.0f}M"
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k"


@dataclasses.dataclass(frozen=True)
class SizeResult:
    """One size's study: its name, non-embedding parameter count, tokens a run trains on and its summary."""

    name: str
    params_nonembed: int
    tokens: int
    summary: StudySummary


# the leaderboard row's fields a scaling row shows, before and after its per-seed sensitivities (summary.json order)
_BOARD_HEAD = ("best_lr", "optimum_inside_grid", "best_val_loss", "best_val_loss_ci95", "lr_sensitivity",
               "lr_sensitivity_ci95")
_BOARD_TAIL = ("top_lr", "max_attn_logit_top_lr", "diverged", "runs")


@dataclasses.dataclass(frozen=True)
class ScalingRow:
    """One arm at one size: that size's leaderboard row (`board`, leaderboard.py: best LR and its val loss, LR
    sensitivity, the max logit at the top LR, divergences) and that size's per-seed LR sensitivities (the points of
    the fit)."""

    size: str
    params_nonembed: int
    tokens: int
    board: LeaderboardRow
    lr_sensitivity_per_seed: Tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return self.board.label

    def to_json(self) -> Dict[str, Any]:
        """summary.json's "scaling" entry: the board's fields flat, beside the size's."""
        b = self.board.to_json()
        return {"variant": b["variant"], "optimizer": b["optimizer"], "size": self.size,
                "params_nonembed": self.params_nonembed, "tokens": self.tokens, **{k: b[k] for k in _BOARD_HEAD},
                "lr_sensitivity_per_seed": list(self.lr_sensitivity_per_seed), **{k: b[k] for k in _BOARD_TAIL}}


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """LR sensitivity = intercept + slope * log10(params), fitted through `n_points` per-seed values at `n_sizes`
    sizes (module docstring); `slope_ci95` None when there are too few points."""

    slope: Optional[float] = None
    slope_ci95: Optional[Interval] = None
    intercept: Optional[float] = None
    slope_se: Optional[float] = None
    df: int = 0
    n_points: int = 0
    n_sizes: int = 0

    @property
    def resolved(self) -> bool:
        """The interval excludes zero."""
        return self.slope_ci95 is not None and (self.slope_ci95[0] > 0 or self.slope_ci95[1] < 0)

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["slope_ci95"] = None if self.slope_ci95 is None else list(self.slope_ci95)
        return out

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ScalingFit":
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["slope_ci95"] = interval_from_json(kw.get("slope_ci95"))
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class SlopeDifference:
    a: str
    b: str
    difference: Optional[float] = None
    ci95: Optional[Interval] = None

    def to_json(self) -> Dict[str, Any]:
        return {"a": self.a, "b": self.b, "difference": self.difference,
                "ci95": None if self.ci95 is None else list(self.ci95)}


def fit_slope(points: Sequence[Tuple[float, float]]) -> ScalingFit:
    """Least-squares slope of y on log10(x) over `points` (params, sensitivity), with its 95% t interval."""
    pts = [(math.log10(x), y) for x, y in points if x > 0 and y is not None and math.isfinite(y)]
    n, sizes = len(pts), len({x for x, _ in pts})
    if n < 2 or sizes < 2:
        return ScalingFit(n_points=n, n_sizes=sizes)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope * mx
    if n < 3:
        return ScalingFit(slope=slope, intercept=intercept, n_points=n, n_sizes=sizes)
    sse = sum((y - intercept - slope * x) ** 2 for x, y in pts)
    se = math.sqrt(sse / (n - 2) / sxx)
    half = t_quantile(0.975, n - 2) * se
    return ScalingFit(slope=slope, slope_ci95=(slope - half, slope + half), intercept=intercept, slope_se=se,
                      df=n - 2, n_points=n, n_sizes=sizes)


def slope_difference(a: str, fa: ScalingFit, b: str, fb: ScalingFit) -> SlopeDifference:
    if fa.slope is None or fb.slope is None:
        return SlopeDifference(a, b)
    diff = fa.slope - fb.slope
    if fa.slope_se is None or fb.slope_se is None:
        return SlopeDifference(a, b, diff)
    half = t_quantile(0.975, min(fa.df, fb.df)) * math.sqrt(fa.slope_se ** 2 + fb.slope_se ** 2)
    return SlopeDifference(a, b, diff, (diff - half, diff + half))


@dataclasses.dataclass(frozen=True)
class ScalingAnalysis:
    rows: Tuple[ScalingRow, ...]
    fits: Dict[str, ScalingFit]  # by arm label
    difference: Optional[SlopeDifference] = None  # baseline - qknorm, when both are in the study

    def rows_of(self, label: str) -> List[ScalingRow]:
        return [r for r in self.rows if r.label == label]

    def to_json(self) -> Dict[str, Any]:
        return {"scaling": [r.to_json() for r in self.rows],
                "scaling_fit": {k: f.to_json() for k, f in self.fits.items()},
                "scaling_fit_difference": self.difference.to_json() if self.difference else None}


def scaling_analysis(sizes: Sequence[SizeResult]) -> ScalingAnalysis:
    """Rows per (arm, size) from each size's study, and each arm's fitted slope."""
    rows = []
    for size in sizes:
        s = size.summary
        for board in s.analysis.leaderboard:
            sens = s.analysis.lr_sensitivity.get(board.label)
            rows.append(ScalingRow(
                size=size.name, params_nonembed=size.params_nonembed, tokens=size.tokens, board=board,
                lr_sensitivity_per_seed=tuple(sens.per_seed[k] for k in sorted(sens.per_seed)) if sens else ()))
    labels = list(dict.fromkeys(r.label for r in rows))
    fits = {k: fit_slope([(r.params_nonembed, y) for r in rows if r.label == k for y in r.lr_sensitivity_per_seed])
            for k in labels}
    diff = (slope_difference("baseline", fits["baseline"], "qknorm", fits["qknorm"])
            if {"baseline", "qknorm"} <= set(fits) else None)
    return ScalingAnalysis(rows=tuple(rows), fits=fits, difference=diff)


def _num(x: Optional[float], spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _slope_text(slope: Optional[float], ci: Optional[Interval]) -> str:
    return _num(slope, "+.3f") + (f" [{_num(ci[0], '+.3f')}, {_num(ci[1], '+.3f')}]" if ci else " (no interval)")


def trend_sentences(analysis: ScalingAnalysis) -> List[str]:
    """The trend in words: a direction only where the 95% interval excludes zero (module docstring)."""
    out = []
    for label, fit in analysis.fits.items():
        rows = analysis.rows_of(label)
        span = (f"{fmt_params(min(r.params_nonembed for r in rows))} to "
                f"{fmt_params(max(r.params_nonembed for r in rows))} non-embedding parameters") if rows else ""
        if fit.slope is None:
            out.append(f"{label}: no LR sensitivity measured at two sizes or more; no trend.")
        elif not fit.resolved:
            why = "its 95% interval includes zero" if fit.slope_ci95 else "too few points for an interval"
            out.append(f"{label}: the trend of LR sensitivity with size is not resolved at these sizes ({span}): slope "
                       f"{_slope_text(fit.slope, fit.slope_ci95)} per 10x parameters; {why}.")
        else:
            word = "grows" if fit.slope > 0 else "shrinks"
            edge = [r.size for r in rows if r.board.optimum_inside_grid is False]
            out.append(f"{label}: LR sensitivity {word} with model size over {span}: slope "
                       f"{_slope_text(fit.slope, fit.slope_ci95)} per 10x parameters (95% interval excludes zero)"
                       + (f"; but at {', '.join(edge)} the best LR is at a grid edge, so the sensitivity there, and "
                          "this slope, depend on where the grid ends." if edge else "."))
    d = analysis.difference
    if d is not None and d.difference is not None:
        if d.ci95 is not None and (d.ci95[0] > 0 or d.ci95[1] < 0):
            word = "faster" if d.difference > 0 else "slower"
            out.append(f"Without QK-norm LR sensitivity grows {word} with size than with it: slope difference "
                       f"{d.a} - {d.b} {_slope_text(d.difference, d.ci95)} per 10x parameters (interval excludes "
                       "zero).")
        else:
            out.append(f"Whether LR sensitivity grows faster without QK-norm than with it is not resolved at these "
                       f"sizes: slope difference {d.a} - {d.b} {_slope_text(d.difference, d.ci95)} per 10x "
                       "parameters.")
    for label in analysis.fits:  # as measured, smallest size first: no trend is claimed from three maxima
        rows = [r for r in analysis.rows_of(label) if r.board.max_attn_logit_top_lr is not None]
        if rows:
            out.append(f"Max attention logit of {label} at the top LR (largest over seeds), by size: " + ", ".join(
                f"{r.size} {_num(r.board.max_attn_logit_top_lr, '.3g')}" for r in rows) + ".")
    edge = [f"{r.label} at {r.size} (best LR {_num(r.board.best_lr, 'g')})" for r in analysis.rows
            if r.board.optimum_inside_grid is False]
    if edge:
        out.append("The grid does not bracket the optimum of " + ", ".join(edge) + ": there the LR sensitivity "
                   "depends on where the grid ends; widen the grid (--lrs) for a size whose optimum moved.")
    return out


@dataclasses.dataclass(frozen=True)
class ScalingSummary:
    """A scaling study: each size's study (in size order), the analysis across sizes, and what was run."""

    sizes: Tuple[SizeResult, ...]
    analysis: ScalingAnalysis
    config: ScalingConfig  # what was run (scaling_config.py)

    def to_json(self) -> Dict[str, Any]:
        """summary.json: the scaling rows and fits, `lr_sensitivity` {arm: {size: value}}, every run with its size."""
        sens: Dict[str, Dict[str, Any]] = {}
        for r in self.analysis.rows:
            sens.setdefault(r.label, {})[r.size] = r.board.lr_sensitivity
        runs = [{**r.to_json(), "size": s.name} for s in self.sizes for r in s.summary.runs]
        return {**self.analysis.to_json(), "lr_sensitivity": sens, "runs": runs, "config": self.config.to_json()}
