"""The study's printed summary: one row a variant (best loss and LR, whether the grid brackets the optimum, LR
sensitivity, max logit at the top LR, run outcomes), notes on optima at a grid edge and on runs left out, then
the checks with their numbers and PASS/FAIL."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

from .analysis import Check, Sensitivity, check_logit_pair, logit_at
from .summary import StudySummary

__all__ = ["format_table", "format_checks", "format_notes", "fmt", "plural", "sampling_note"]


def fmt(x, spec=".3f") -> str:
    if x is None:
        return "-"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "inf"
    return format(x, spec)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _with_spread(mean: Optional[float], lo: Optional[float], hi: Optional[float], many: bool) -> str:
    return fmt(mean) + (f" [{fmt(lo)}-{fmt(hi)}]" if many and mean is not None else "")


def _best(sens: Optional[Sensitivity], many: bool) -> str:
    if sens is None or sens.optimum.best_lr is None:
        return "-"
    point = next((p for p in sens.curve if p.lr == sens.optimum.best_lr), None)
    lo, hi = (point.lo, point.hi) if point else (None, None)
    return f"{_with_spread(sens.optimum.best_loss, lo, hi, many)} ({sens.optimum.best_lr:g})"


def _where(sens: Optional[Sensitivity]) -> str:
    inside = sens.optimum.inside if sens else None
    return {True: "inside grid", False: "AT GRID EDGE", None: "unknown"}[inside]


def _sensitivity(sens: Optional[Sensitivity], many: bool) -> str:
    if sens is None:
        return "-"
    if sens.value is None and sens.incomplete:
        why: Dict[str, int] = {}
        for _s, _lr, status in sens.incomplete:
            why[status] = why.get(status, 0) + 1
        return "- (" + ", ".join(f"{n} {w}" for w, n in why.items()) + ")"
    return _with_spread(sens.value, sens.lo, sens.hi, many and len(sens.per_seed) > 1)


def sampling_note(summary: StudySummary) -> str:
    """What the max attention logit is: sampled, so a lower bound of the run's true maximum."""
    tr, seqs = summary.config.train, summary.config.stats_seqs
    every = tr.stats_every
    if not every or not seqs:
        return "max logit: the largest attention logit seen at the run's stats passes (a lower bound of its maximum)"
    return (f"max logit: the largest attention logit (fp32, over all layers and heads) at stats passes every "
            f"{every} steps and at the last step, each on {min(seqs, tr.batch_size)} of the batch's "
            f"{tr.batch_size} sequences: a lower bound of the run's true maximum")


def format_notes(summary: StudySummary) -> List[str]:
    """Optima at a grid edge, runs left out of LR sensitivity (failed, cut), and what the max logit samples."""
    out = []
    for v in summary.labels:
        sens = summary.analysis.lr_sensitivity.get(v)
        if sens is not None and sens.optimum.inside is not True and sens.optimum.note:
            extend = ("; extend --lrs past it" if sens.optimum.inside is False and len(summary.lrs) > 1 else "")
            out.append(f"note: {v}: {sens.optimum.note}" + (f" ({sens.optimum.best_lr:g})" if sens.optimum.best_lr
                                                                else "") + extend)
    refused = [r for r in summary.runs if r.refused]
    if refused:
        out.append(f"refused ({plural(len(refused), 'run')}: the training loop refused the settings; not trained):")
        out.extend(f"  {r.name}: {r.error}" for r in refused)
    failed = [r for r in summary.runs if r.failed]
    if failed:
        out.append(f"failed ({plural(len(failed), 'run')}, left out of LR sensitivity; not divergence):")
        out.extend(f"  {r.name}: {r.error}" for r in failed)
    cut = [r for r in summary.runs if r.cut]
    if cut:
        out.append(f"cut by the time budget: {plural(len(cut), 'run')}, left out of LR sensitivity (rerun the same "
                   "command to train them; finished runs are reused)")
    out.append(sampling_note(summary))
    return out


def format_table(summary: StudySummary) -> str:
    top = max(summary.lrs)
    many = len(summary.seeds) > 1
    rows = [("variant", "best val loss (at LR)", "optimum", "LR sensitivity", f"max logit @ LR {top:g}", "diverged",
             "failed", "cut")]
    for v in summary.labels:
        vr = summary.runs_of(v)
        sens = summary.analysis.lr_sensitivity.get(v)
        rows.append((v, _best(sens, many), _where(sens), _sensitivity(sens, many),
                     fmt(logit_at(vr, v, top, max), ".4g"), f"{sum(r.diverged for r in vr)}/{len(vr)}",
                     str(sum(r.failed for r in vr)), str(sum(r.cut for r in vr))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if many:
        lines.insert(0, f"loss and LR sensitivity: mean [min-max] over {len(summary.seeds)} seeds; max logit: the "
                        "largest over seeds")
    lines.extend(format_notes(summary))
    lines.append("")
    lines.extend(format_checks(summary.analysis.checks))
    return "\n".join(lines)


def format_checks(checks: Dict[str, Check]) -> List[str]:
    out = []
    c1, c2 = checks["max_logit_ratio"], checks["lr_sensitivity_ratio"]
    verdict = {True: "PASS", False: "FAIL", None: "N/A "}
    if c1.passed is None:
        out.append(f"[{verdict[None]}] {c1.description}: {c1.note}")
    else:
        at = check_logit_pair(c1)
        others = ", ".join(f"{fmt(p['ratio'], '.3g')}x at {p['lr']:g}" for p in c1.per_lr if p is not at)
        out.append(f"[{verdict[c1.passed]}] {c1.description}: at LR {c1.lr:g} baseline "
                   f"{fmt(at['baseline'], '.4g')} vs qknorm {fmt(at['qknorm'], '.4g')} = "
                   f"{fmt(c1.value, '.3g')}x" + (f" (also {others})" if others else ""))
    if c2.passed is None:
        out.append(f"[{verdict[None]}] {c2.description}: {c2.note}")
    else:
        out.append(f"[{verdict[c2.passed]}] {c2.description}: qknorm {c2.qknorm:.3f} / baseline "
                   f"{c2.baseline:.3f} = {c2.value:.2f}x")
    return out
