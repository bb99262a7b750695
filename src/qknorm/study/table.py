"""The study's printed summary: one row a variant, then the checks with their numbers and PASS/FAIL."""
from __future__ import annotations

import math
from typing import Dict, List

from .analysis import Check, best_run, check_logit_pair, logit_at
from .summary import StudySummary

__all__ = ["format_table", "format_checks", "fmt"]


def fmt(x, spec=".3f") -> str:
    if x is None:
        return "-"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "inf"
    return format(x, spec)


def format_table(summary: StudySummary) -> str:
    top = max(summary.lrs)
    rows = [("variant", "best val loss (at LR)", "LR sensitivity", f"max logit @ LR {top:g}", "diverged")]
    for v in summary.variants:
        vr = summary.runs_of(v)
        best = best_run(vr)
        cut = sum(r.cut for r in vr)
        sens = summary.analysis.lr_sensitivity.get(v)
        sens_txt = fmt(sens.value if sens else None) if not cut else f"- ({cut} runs cut)"
        rows.append((v, f"{fmt(best.sens_loss)} ({best.lr:g})" if best else "-", sens_txt,
                     fmt(logit_at(vr, v, top, max), ".4g"), f"{sum(r.diverged for r in vr)}/{len(vr)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
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
