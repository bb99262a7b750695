"""The report's conclusions in words, derived from the leaderboard's numbers and their 95% CIs (ci.py).

The rule every sentence follows: two methods are compared only through their confidence intervals. Intervals
that do not overlap say which is lower; intervals that overlap make the two "not separated at this scale", and
they are then listed in the study's variant order, never ranked. With one seed there are no intervals and no
method is ranked. Logit maxima, which differ by orders of magnitude, are stated as measured (the largest over
seeds) against fixed thresholds, not ranked by small differences.

    for heading, sentences in conclusions(summary.analysis.leaderboard, summary.variants, summary.optimizers):
        ...  # "AdamW", ["Lowest best-LR validation loss with AdamW: ...", ...]
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .ci import Interval, Separation, separation
from .leaderboard import LeaderboardRow

__all__ = ["conclusions", "compare_to", "LOGIT_BOUNDED", "ENTROPY_COLLAPSE"]

LOGIT_BOUNDED = 100.0  # max attention logit at or below: bounded (diagnostics.GROWTH)
ENTROPY_COLLAPSE = 0.1  # nats: a layer's mean attention entropy below this is near one-hot attention
_OPT = {"adamw": "AdamW", "muon": "Muon"}
Metric = Callable[[LeaderboardRow], Tuple[Optional[float], Optional[Interval]]]

_BEST: Metric = lambda r: (r.best_val_loss, r.best_val_loss_ci95)  # noqa: E731
_SENS: Metric = lambda r: (r.lr_sensitivity, r.lr_sensitivity_ci95)  # noqa: E731
_ENTROPY: Metric = lambda r: (r.attn_entropy_top_lr, r.attn_entropy_top_lr_ci95)  # noqa: E731
_DRIFT: Metric = lambda r: (r.log_z_drift_top_lr, r.log_z_drift_top_lr_ci95)  # noqa: E731


def _num(x: Optional[float], spec: str = ".3f") -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else format(x, spec)


def _with_ci(value: Optional[float], ci: Optional[Interval], spec: str = ".3f") -> str:
    return _num(value, spec) + (f" [{_num(ci[0], spec)}, {_num(ci[1], spec)}]" if ci is not None else "")


def _names(rows: Sequence[LeaderboardRow], metric: Optional[Metric] = None, spec: str = ".3f") -> str:
    if metric is None:
        return ", ".join(r.variant for r in rows)
    return ", ".join(f"{r.variant} {_with_ci(*metric(r), spec)}" for r in rows)


def compare_to(rows: Sequence[LeaderboardRow], ref: LeaderboardRow,
               metric: Metric) -> Dict[Separation, List[LeaderboardRow]]:
    """`rows` (without `ref`) grouped by how their interval of `metric` lies against `ref`'s."""
    out: Dict[Separation, List[LeaderboardRow]] = {s: [] for s in Separation}
    for r in rows:
        if r is not ref and metric(r)[0] is not None:
            out[separation(metric(r)[1], metric(ref)[1])].append(r)
    return out


def _lowest(rows: Sequence[LeaderboardRow], metric: Metric, what: str, opt: str) -> str:
    """Which arms share the lowest value of `metric`, or that nothing can be ranked (`what`: a singular noun
    phrase, "best-LR validation loss")."""
    have = [r for r in rows if metric(r)[0] is not None]
    if not have:
        return f"No {what} was measured with {opt}."
    if any(metric(r)[1] is None for r in have):
        lo, hi = min(metric(r)[0] for r in have), max(metric(r)[0] for r in have)
        return (f"{what[0].upper() + what[1:]} with {opt}: measured {lo:.3f} to {hi:.3f}, without confidence "
                "intervals (fewer than 2 seeds), so no method is ranked.")
    lead = min(have, key=lambda r: metric(r)[0])
    groups = compare_to(have, lead, metric)
    tie = [r for r in have if r is lead or r in groups[Separation.OVERLAP]]
    if len(tie) == 1:
        text = (f"{lead.variant} has the lowest {what} with {opt}, {_with_ci(*metric(lead))}, its 95% CI apart "
                "from every other method's.")
    else:
        text = (f"Lowest {what} with {opt}: {_names(tie)} are not separated at this scale (each one's 95% CI "
                f"overlaps that of the lowest mean).")
    if groups[Separation.ABOVE]:
        text += (f" Above {lead.variant}'s {_with_ci(*metric(lead))} with CIs apart: "
                 f"{_names(groups[Separation.ABOVE], metric)}.")
    return text


def _against_baseline(rows: Sequence[LeaderboardRow], base: LeaderboardRow, metric: Metric, what: str,
                      lower: str, higher: str, spec: str = ".3f") -> str:
    if metric(base)[0] is None:
        return ""
    groups = compare_to(rows, base, metric)
    parts = [f"{label} (CIs apart): {_names(groups[sep], metric, spec)}"
             for sep, label in ((Separation.BELOW, lower), (Separation.ABOVE, higher)) if groups[sep]]
    if groups[Separation.OVERLAP]:
        parts.append(f"not separated from the baseline at this scale: {_names(groups[Separation.OVERLAP])}")
    if groups[Separation.UNKNOWN]:
        parts.append(f"no interval to compare (fewer than 2 seeds): {_names(groups[Separation.UNKNOWN])}")
    if not parts:
        return ""
    return f"{what} against the baseline's {_with_ci(*metric(base), spec)}: " + "; ".join(parts) + "."


def _logits(rows: Sequence[LeaderboardRow], opt: str) -> str:
    have = [r for r in rows if r.max_attn_logit_top_lr is not None]
    if not have:
        return ""
    top = have[0].top_lr
    bounded = [r for r in have if r.max_attn_logit_top_lr <= LOGIT_BOUNDED]
    grew = [r for r in have if r.max_attn_logit_top_lr > LOGIT_BOUNDED]
    text = f"At the top LR {top:g} with {opt} (max attention logit, largest over seeds)"
    if bounded:
        text += f", at or below {LOGIT_BOUNDED:g}: " + ", ".join(
            f"{r.variant} {_num(r.max_attn_logit_top_lr, '.3g')}" for r in bounded)
    if grew:
        text += ("; " if bounded else ", ") + f"grew past {LOGIT_BOUNDED:g}: " + ", ".join(
            f"{r.variant} {_num(r.max_attn_logit_top_lr, '.3g')}" for r in grew)
    text += "."
    capped = [r for r in grew if r.attn_softcap]
    for r in capped:
        seen = r.attn_softcap * math.tanh(r.max_attn_logit_top_lr / r.attn_softcap)
        text += (f" {r.variant}'s logit is before its cap: its softmax saw at most {seen:.3g} "
                 f"(= {r.attn_softcap:g} tanh(m / {r.attn_softcap:g})); the cap bounds what attention sees, not q.k.")
    collapsed = [r for r in have if r.attn_entropy_min_layer_top_lr is not None
                 and r.attn_entropy_min_layer_top_lr < ENTROPY_COLLAPSE]
    if collapsed:
        text += (f" A layer's mean attention entropy fell below {ENTROPY_COLLAPSE:g} nats (near one-hot attention, "
                 "Zhai et al.'s entropy collapse) in: " + ", ".join(
                     f"{r.variant} {r.attn_entropy_min_layer_top_lr:.3f}" for r in collapsed) + ".")
    return text


def _costs(rows: Sequence[LeaderboardRow], opt: str) -> str:
    have = [r for r in rows if r.variant != "baseline" and r.step_time_ratio is not None]
    if not have:
        return ""
    basis = {"cpu": "process CPU time per step", "wall": "wall time per step"}.get(have[0].step_time_basis or "",
                                                                                  "time per step")
    dearer = [r for r in have if r.step_time_ratio_ci95 and r.step_time_ratio_ci95[0] > 1]
    cheaper = [r for r in have if r.step_time_ratio_ci95 and r.step_time_ratio_ci95[1] < 1]
    same = [r for r in have if r not in dearer and r not in cheaper]

    def ratios(rs):
        return ", ".join(f"{r.variant} {_with_ci(r.step_time_ratio, r.step_time_ratio_ci95, '.2f')}x" for r in rs)

    parts = [f"more expensive (CI above 1): {ratios(dearer)}" if dearer else "",
             f"cheaper (CI below 1): {ratios(cheaper)}" if cheaper else "",
             f"not separated from the baseline's cost: {_names(same)}" if same else ""]
    return (f"Cost with {opt} ({basis} against the baseline's): " + "; ".join(p for p in parts if p) + ".")


def _optimizer_findings(rows: Sequence[LeaderboardRow], opt: str) -> List[str]:
    name = _OPT.get(opt, opt)
    live = [r for r in rows if r.status != "refused"]
    base = next((r for r in live if r.variant == "baseline"), None)
    parts = [_lowest(live, _BEST, "best-LR validation loss", name), _lowest(live, _SENS, "LR sensitivity", name)]
    if base is not None:
        others = [r for r in live if r is not base]
        parts += [_against_baseline(others, base, _BEST, "Best validation loss", "lower", "higher"),
                  _against_baseline(others, base, _SENS, "LR sensitivity (lower is flatter)", "flatter", "steeper"),
                  _against_baseline(others, base, _ENTROPY, "Attention entropy at the top LR (nats)",
                                    "lower (more peaked)", "higher (more spread)"),
                  _against_baseline(others, base, _DRIFT, "Output log Z drift at the top LR", "lower", "higher")]
    parts += [_logits(live, name), _costs(live, name)]
    refused = [r for r in rows if r.status == "refused"]
    if refused:
        parts.append("Refused combinations (not trained): " + "; ".join(f"{r.variant}: {r.note}" for r in refused)
                     + ".")
    return [p for p in parts if p]


def _across_optimizers(rows: Sequence[LeaderboardRow], variants: Sequence[str],
                       optimizers: Sequence[str]) -> List[str]:
    """Each variant's first optimizer against every other one, on the best loss and the LR sensitivity."""
    if len(optimizers) < 2:
        return []
    first = optimizers[0]
    by = {(r.variant, r.optimizer): r for r in rows if r.status != "refused"}
    sentences = []
    for opt in optimizers[1:]:
        for metric, what in ((_BEST, "best validation loss"), (_SENS, "LR sensitivity")):
            groups: Dict[Separation, List[str]] = {s: [] for s in Separation}
            for v in variants:
                a, b = by.get((v, opt)), by.get((v, first))
                if a is None or b is None or metric(a)[0] is None or metric(b)[0] is None:
                    continue
                groups[separation(metric(a)[1], metric(b)[1])].append(v)
            parts = [f"{label}: {', '.join(groups[s])}" for s, label in (
                (Separation.BELOW, "lower (CIs apart)"), (Separation.ABOVE, "higher (CIs apart)"),
                (Separation.OVERLAP, "not separated at this scale"), (Separation.UNKNOWN, "no interval"))
                if groups[s]]
            if parts:
                sentences.append(f"{_OPT.get(opt, opt)} against {_OPT.get(first, first)}, same variant, {what}: "
                                 + "; ".join(parts) + ".")
    return sentences


def conclusions(rows: Sequence[LeaderboardRow], variants: Sequence[str],
                optimizers: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """(heading, sentences): one section per optimizer, then the optimizers against each other (module
    docstring); sections with nothing to say are left out."""
    out = [(_OPT.get(o, o), _optimizer_findings([r for r in rows if r.optimizer == o], o)) for o in optimizers]
    names = " and ".join(_OPT.get(o, o) for o in optimizers)
    out.append((f"{names}, same variant", _across_optimizers(rows, variants, optimizers)))
    return [(h, s) for h, s in out if s]
